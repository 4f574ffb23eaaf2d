"""Fingerprint of what a corpus build read (its utterance list), to detect a changed manifest.

A TFDS build that already exists is reused as is, so rows added to, removed from or changed in a
manifest (or files added to a corpus tree) would silently be ignored. The builder records a
fingerprint of its utterance records (split, language, id, path, transcript, speaker, segment) in
`build_report.json`; before reusing a build it computes the fingerprint again from manual_dir and
stops with `ManifestChanged` naming what differs, per language, when they disagree.
"""
from __future__ import annotations

import hashlib
from typing import Iterable


class ManifestChanged(ValueError):
  """The utterances under manual_dir differ from those the existing build was made from."""


def _row(utt) -> str:
  return "\t".join(str(x) for x in (utt.split, utt.language, utt.id, utt.path, utt.transcript,
                                    utt.speaker, utt.start_s, utt.end_s))


def fingerprint(utterances: Iterable) -> dict:
  """{"rows": n, "languages": {language: {"rows": n, "sha256": digest of its sorted rows}}}."""
  rows: dict[str, list[str]] = {}
  for utt in utterances:
    rows.setdefault(str(utt.language), []).append(_row(utt))
  languages = {lang: {"rows": len(r), "sha256": hashlib.sha256("\n".join(sorted(r)).encode()).hexdigest()}
               for lang, r in sorted(rows.items())}
  return {"rows": sum(v["rows"] for v in languages.values()), "languages": languages}


def difference(built: dict, now: dict) -> str | None:
  """What changed between two fingerprints, per language; None when they are equal."""
  old, new = built.get("languages", {}), now.get("languages", {})
  parts = [f"language {lang!r} added ({new[lang]['rows']} rows)" for lang in sorted(new.keys() - old.keys())]
  parts += [f"language {lang!r} removed ({old[lang]['rows']} rows)" for lang in sorted(old.keys() - new.keys())]
  for lang in sorted(old.keys() & new.keys()):
    if old[lang] != new[lang]:
      rows = (f"{old[lang]['rows']} -> {new[lang]['rows']} rows" if old[lang]["rows"] != new[lang]["rows"]
              else f"same {new[lang]['rows']} rows, contents changed")
      parts.append(f"language {lang!r}: {rows}")
  return "; ".join(parts) if parts else None
