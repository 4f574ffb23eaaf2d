"""IARPA BABEL conversational telephone speech, cut into utterances by the transcripts' time marks.

An LDC BABEL release (IARPA-babel<id>b-v*) holds `conversational/{training,dev}/audio/*.sph`
(8 kHz a-law SPHERE, one conversation side each; a few `.wav` at 48 kHz) and
`transcription/<same name>.txt`, where time marks `[12.345]` on their own lines bound the text
between them, as Kaldi's `egs/babel` recipe reads them. Each stretch with speech becomes one
utterance (the recording is decoded per segment, resampled to 16 kHz); stretches holding only
non-speech tags (`<no-speech>`, `<breath>`, `(())`, ...) are not utterances and are dropped.
The transcript is the raw BABEL text, tags included: normalising it is the tokenizer's job.
training -> "train", dev -> "validation"; eval has no public transcripts and is not read, nor is
scripted/ or untranscribed-training/. Speaker: `<subject id>_A` (inLine side) or `_B` (outLine).
The language is found from the BABEL id in the folder names (`BABEL_OP1_102`, `102-assamese`,
`IARPA-babel102b-...`) and mapped to an ISO 639 code (102 -> "as"); a folder with no id keeps
its own name. BABEL's SPHERE audio is documented as 8-bit a-law, which libsndfile reads; a
shorten-compressed SPHERE file (some older LDC corpora) is not: it would be reported as
undecodable, convert it with sph2pipe first. Each segment is read by seeking in its recording, so keep manual_dir on a local
disk (a remote file would be fetched once per segment).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from etils import epath

from data_pipelines.corpora import base

LANGUAGE_CODES = {
    "101": "yue", "102": "as", "103": "bn", "104": "ps", "105": "tr", "106": "tl", "107": "vi",
    "201": "ht", "202": "sw", "203": "lo", "204": "ta", "205": "kmr", "206": "zu", "207": "tpi",
    "301": "ceb", "302": "kk", "303": "te", "304": "lt", "305": "gn", "306": "ig", "307": "am",
    "401": "mn", "402": "jv", "403": "luo", "404": "ka",
}
_SPLIT_DIRS = {"train": "training", "validation": "dev"}
_BABEL_ID = re.compile(r"(?i)(?:^|babel(?:_[a-z]+\d*)?_?)(\d{3})(?!\d)")
_TIME_MARK = re.compile(r"^\s*\[(\d+(?:\.\d*)?)\]\s*$")
_SIDE = re.compile(r"^BABEL_[A-Za-z0-9]+_\d{3}_(\d+)_.*_(inLine|outLine|scripted)$")


def language_of(relative_dir: str) -> str:
  """ISO code from the first BABEL id in a relative folder path, else the path's first folder."""
  parts = relative_dir.split("/")
  for part in parts:
    match = _BABEL_ID.search(part)
    if match:
      return LANGUAGE_CODES.get(match.group(1), f"babel{match.group(1)}")
  return parts[0]


def is_speech(text: str) -> bool:
  """True when `text` has a word that is not a BABEL tag (`<...>`), `(())` or `~`."""
  return any(not (w.startswith("<") and w.endswith(">")) and w not in ("(())", "~")
             for w in text.split())


def read_segments(text: str, where: str) -> list[tuple[float, float, str]]:
  """`(start_s, end_s, text)` of each stretch between consecutive time marks that has speech.

  Raises ValueError naming `where` and the line when a time mark goes backwards.
  """
  segments, start, lines = [], None, []
  for line_no, line in enumerate(text.splitlines(), 1):
    mark = _TIME_MARK.match(line)
    if not mark:
      lines.append(line.strip())
      continue
    time = float(mark.group(1))
    if start is not None:
      if time < start:
        raise ValueError(f"{where}:{line_no}: time mark [{time}] before the previous [{start}]")
      words = " ".join(w for w in lines if w)
      if is_speech(words):
        segments.append((start, time, words))
    start, lines = time, []
  return segments


def speaker_of(recording: str) -> str:
  """`BABEL_OP1_102_10019_..._inLine` -> `10019_A` (outLine -> `_B`); other names as they are."""
  match = _SIDE.match(recording)
  if not match:
    return recording
  return f"{match.group(1)}_{'B' if match.group(2) == 'outLine' else 'A'}"


class Babel(base.CorpusBuilder, skip_registration=True):
  """IARPA BABEL conversational telephone speech with transcripts (LDC releases, 25 languages)."""

  HOMEPAGE = "https://www.iarpa.gov/research-programs/babel"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put one folder per BABEL language (the extracted LDC release) in manual_dir; the folder may
  nest (Kaldi-style 404-georgian/release-current/BABEL_OP3_404/ works) as long as it contains
    .../conversational/training/audio/*.sph      and .../conversational/training/transcription/*.txt
    .../conversational/dev/audio/*.sph (optional) and .../conversational/dev/transcription/*.txt
  The BABEL language id (102, 404, ...) in the folder names picks the language field (as, ka, ...).
  """

  def _discover(self, manual_dir: epath.Path) -> dict[str, epath.Path]:
    found: dict[str, epath.Path] = {}
    for conversational in sorted(_find_dirs(manual_dir, "conversational", max_depth=4)):
      release = conversational.parent
      relative = str(release.relative_to(manual_dir)) if release != manual_dir else manual_dir.name
      language = language_of(relative)
      if language in found:
        raise ValueError(f"babel: language {language!r} found twice: {found[language]} and "
                         f"{conversational}; keep one release per language")
      found[language] = conversational
    return found

  def _utterances(self, language: str, conversational: epath.Path) -> Iterator[base.Utterance]:
    for split, split_dir_name in _SPLIT_DIRS.items():
      split_dir = conversational / split_dir_name
      if not (split_dir / "transcription").is_dir():
        continue
      for transcript_path in sorted((split_dir / "transcription").glob("*.txt")):
        recording = transcript_path.stem
        audio = [split_dir / "audio" / f"{recording}{ext}" for ext in (".sph", ".wav")]
        audio = [p for p in audio if p.exists()]
        if not audio:
          self._skip(f"{transcript_path}: no audio/{recording}.sph or .wav beside it")
          continue
        try:
          segments = read_segments(transcript_path.read_text(encoding="utf-8"), str(transcript_path))
        except ValueError as e:
          self._skip(str(e))
          continue
        for start, end, text in segments:
          yield base.Utterance(
              split=split, language=language, path=audio[0],
              id=f"{language}/{recording}_{round(start * 100):07d}_{round(end * 100):07d}",
              transcript=text,
              speaker=speaker_of(recording), start_s=start, end_s=end)


def _find_dirs(root: epath.Path, name: str, max_depth: int) -> Iterator[epath.Path]:
  """Folders called `name` under `root`, at most `max_depth` levels down (not inside a match)."""
  if max_depth < 0:
    return
  for child in sorted(root.iterdir()):
    if not child.is_dir():
      continue
    if child.name == name:
      yield child
    else:
      yield from _find_dirs(child, name, max_depth - 1)
