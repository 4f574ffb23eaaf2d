"""A user's own speech: every `*.tsv` manifest directly in manual_dir, one row per audio file.

Header (tab-separated, columns by name, any order): `path` and `language` are required;
`transcript`, `speaker` and `split` (train / validation / test; dev is read as validation;
default train) are optional. Paths are relative to the TSV (absolute paths work too); any format
and sample rate soundfile reads (WAV, FLAC, MP3, OGG/Opus, SPHERE, ...), mono or multichannel.
A row that cannot be used (wrong number of fields, empty path or language, a language code with no
letters or digits, unknown split, a file already listed) is skipped and counted in the build report
like an unreadable file.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator

from etils import epath

from data_pipelines.corpora import base
from data_pipelines.features import language_split_name

REQUIRED_COLUMNS = ("path", "language")
OPTIONAL_COLUMNS = ("transcript", "speaker", "split")
_SPLIT_NAMES = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}


class AudioManifest(base.CorpusBuilder, skip_registration=True):
  """A user's own audio listed in TSV manifests (path, language, transcript, speaker, split)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put one or more manifests <manual_dir>/*.tsv, tab-separated with a header line:
    path<TAB>language[<TAB>transcript][<TAB>speaker][<TAB>split]
  path is relative to the TSV; split is train, validation (or dev) or test, train if absent.
  """

  def _discover(self, manual_dir: epath.Path) -> dict[str, list[base.Utterance]]:
    manifests = sorted(manual_dir.glob("*.tsv"))
    if not manifests:
      raise FileNotFoundError(f"audio_manifest: no *.tsv manifest in {manual_dir}")
    by_language: dict[str, list[base.Utterance]] = {}
    seen: dict[str, str] = {}
    for manifest in manifests:
      for where, utt in self._read_manifest(manifest, manual_dir):
        if utt.id in seen:
          self._skip(f"{where}: {utt.path} is already listed at {seen[utt.id]}")
          continue
        seen[utt.id] = where
        by_language.setdefault(utt.language, []).append(utt)
    return by_language

  def _utterances(self, language: str, utterances: list[base.Utterance]) -> list[base.Utterance]:
    return utterances

  def _read_manifest(self, manifest: epath.Path,
                     manual_dir: epath.Path) -> Iterator[tuple[str, base.Utterance]]:
    """(`file:line`, utterance) for each usable row of one manifest."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = [c.strip() for c in next(reader, [])]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if unknown or missing:
      raise ValueError(
          f"{manifest}:1: expected a header with {' and '.join(REQUIRED_COLUMNS)} and optionally "
          f"{', '.join(OPTIONAL_COLUMNS)}; found {header} (missing {missing}, unknown {unknown})")
    for line_no, fields in enumerate(reader, 2):
      where = f"{manifest}:{line_no}"
      if not any(f.strip() for f in fields):
        continue
      if len(fields) != len(header):
        self._skip(f"{where}: expected {len(header)} tab-separated fields, found {len(fields)}")
        continue
      row = dict(zip(header, (f.strip() for f in fields)))
      split = _SPLIT_NAMES.get(row.get("split") or "train")
      if not row["path"] or not row["language"] or split is None:
        self._skip(f"{where}: needs a path, a language and a split among "
                   f"{sorted(_SPLIT_NAMES)}; found {row}")
        continue
      try:
        language_split_name(split, row["language"])
      except ValueError as e:
        self._skip(f"{where}: {e}")
        continue
      path = epath.Path(row["path"]) if row["path"].startswith("/") else manifest.parent / row["path"]
      try:
        relative = str(path.relative_to(manual_dir))
      except ValueError:  # an absolute path outside manual_dir
        relative = str(path)
      yield where, base.Utterance(
          split=split, language=row["language"], path=path, id=relative,
          transcript=row.get("transcript", ""), speaker=row.get("speaker", ""))
