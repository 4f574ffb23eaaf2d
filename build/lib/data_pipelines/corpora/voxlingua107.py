"""VoxLingua107: YouTube speech segments labelled with one of 107 languages (for LID).

The release is one zip per language, `<lang>.zip` -> `<lang>/*.wav`, named
`<video_id>__U__S<n>---<start>-<end>.wav`, plus `dev.zip` -> `dev/<lang>/*.wav` (1,609 segments
in 33 languages, checked by two people). Splits:
  train       the language zips, less the held-out videos below
  validation  `validation_fraction` of each language's videos (by a hash of the video id, so all
              segments of a video land together), for early stopping and hyperparameters
  test        the official dev set (the set the XLS-R paper reports LID error on)
No transcripts or speakers.
"""
from __future__ import annotations

from collections.abc import Iterator

from etils import epath

from data_pipelines.corpora import base


def video_of(wav_path: epath.Path) -> str:
  """`abc-123__U__S7---0012.340-0020.100.wav` -> the YouTube video id `abc-123`."""
  stem = wav_path.stem
  return stem.split("__U__")[0] if "__U__" in stem else stem


class Voxlingua107(base.CorpusBuilder, skip_registration=True):
  """VoxLingua107 spoken language identification data (107 languages, 6,628 hours)."""

  HOMEPAGE = "https://bark.phon.ioc.ee/voxlingua107/"
  BUILDER_CONFIGS = [
      base.CorpusConfig(name="all", validation_fraction=0.02,
                        description="Every language found; 2% of the videos held out."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the language zips listed in https://bark.phon.ioc.ee/voxlingua107/zip_urls.txt and
  dev.zip, and unzip them all into manual_dir, which then holds
    <manual_dir>/<lang>/*.wav          (or <manual_dir>/train/<lang>/*.wav)
    <manual_dir>/dev/<lang>/*.wav      (optional: the official dev set, used as "test")
  <lang> is the zip's code (en, sw, ceb, ...); it becomes the language field.
  """

  def _discover(self, manual_dir: epath.Path) -> dict[str, dict[str, epath.Path]]:
    train_root = manual_dir / "train" if (manual_dir / "train").is_dir() else manual_dir
    found: dict[str, dict[str, epath.Path]] = {}
    for lang_dir in sorted(train_root.iterdir()):
      if lang_dir.is_dir() and lang_dir.name not in ("dev", "train"):
        found.setdefault(lang_dir.name, {})["train"] = lang_dir
    if (manual_dir / "dev").is_dir():
      for lang_dir in sorted((manual_dir / "dev").iterdir()):
        if lang_dir.is_dir():
          found.setdefault(lang_dir.name, {})["test"] = lang_dir
    return found

  def _utterances(self, language: str, dirs: dict[str, epath.Path]) -> Iterator[base.Utterance]:
    fraction = self.builder_config.validation_fraction
    for source, lang_dir in sorted(dirs.items()):
      for path in sorted(lang_dir.glob("*.wav")):
        split = "test" if source == "test" else base.train_or_validation(video_of(path), fraction)
        yield base.Utterance(split=split, language=language, path=path,
                             id=f"{source}/{language}/{path.name}")
