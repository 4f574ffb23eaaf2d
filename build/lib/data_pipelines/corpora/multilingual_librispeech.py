"""Multilingual LibriSpeech (MLS), read from the extracted OpenSLR 94 archives.

Each `mls_<language>` (FLAC) or `mls_<language>_opus` (Opus) folder has train/dev/test, each with
`transcripts.txt` (`<utt_id>\\t<text>`, utt_id = `<speaker>_<book>_<n>`) and the audio at
`audio/<speaker>/<book>/<utt_id>.flac|.opus`. dev becomes "validation"; the speaker is the id's
first field. Language folders are mapped to ISO 639-1 codes (german -> de) so that the same
language has the same code in every corpus; the `mls_lm_*` text folders are ignored.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from etils import epath

from data_pipelines.corpora import base

LANGUAGE_CODES = {"english": "en", "german": "de", "dutch": "nl", "french": "fr",
                  "spanish": "es", "italian": "it", "portuguese": "pt", "polish": "pl"}
_SPLIT_DIRS = {"train": "train", "validation": "dev", "test": "test"}
_FOLDER = re.compile(r"^mls_(?!lm_)([a-z]+?)(_opus)?$")


class MultilingualLibrispeech(base.CorpusBuilder, skip_registration=True):
  """Multilingual LibriSpeech: read audiobooks in 8 languages with transcripts (CC BY 4.0)."""

  HOMEPAGE = "https://www.openslr.org/94/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download mls_<language>.tar.gz (FLAC) or mls_<language>_opus.tar.gz (Opus) from
  https://www.openslr.org/94/ and extract them into manual_dir:
    <manual_dir>/mls_<language>[_opus]/{train,dev,test}/transcripts.txt
    <manual_dir>/mls_<language>[_opus]/{train,dev,test}/audio/<speaker>/<book>/<utt_id>.flac|.opus
  <language> is english, german, dutch, french, spanish, italian, portuguese or polish (language
  field en, de, nl, fr, es, it, pt, pl). Keep one of the FLAC / Opus folders per language.
  """

  def _discover(self, manual_dir: epath.Path) -> dict[str, tuple[epath.Path, str]]:
    found: dict[str, tuple[epath.Path, str]] = {}
    for folder in sorted(manual_dir.iterdir()):
      match = _FOLDER.match(folder.name)
      if not (match and folder.is_dir()):
        continue
      name, opus = match.groups()
      if name not in LANGUAGE_CODES:
        raise ValueError(f"multilingual_librispeech: unknown language folder {folder}; "
                         f"expected mls_<one of {sorted(LANGUAGE_CODES)}>[_opus]")
      code = LANGUAGE_CODES[name]
      if code in found:
        raise ValueError(f"multilingual_librispeech: both {found[code][0]} and {folder} hold "
                         f"{name}; keep one of the FLAC / Opus releases in manual_dir")
      found[code] = (folder, ".opus" if opus else ".flac")
    return found

  def _utterances(self, language: str, source: tuple[epath.Path, str]) -> Iterator[base.Utterance]:
    folder, extension = source
    for split, split_dir_name in _SPLIT_DIRS.items():
      split_dir = folder / split_dir_name
      transcripts = split_dir / "transcripts.txt"
      if not transcripts.exists():
        continue
      for line_no, line in enumerate(transcripts.read_text(encoding="utf-8").splitlines(), 1):
        utt_id, tab, text = line.partition("\t")
        parts = utt_id.split("_")
        if not tab or len(parts) != 3:
          if line.strip():
            self._skip(f"{transcripts}:{line_no}: expected '<speaker>_<book>_<n>\\t<text>', "
                       f"found {line[:80]!r}")
          continue
        speaker, book, _ = parts
        yield base.Utterance(
            split=split, language=language,
            path=split_dir / "audio" / speaker / book / f"{utt_id}{extension}",
            id=f"{language}/{utt_id}", transcript=text.strip(), speaker=speaker)
