"""VoxPopuli unlabelled speech, as segmented by the release's own `get_unlabelled_data` script.

`voxpopuli.download_audios` fetches whole European Parliament sessions into
`raw_audios/<lang>/<year>/<event_id>.ogg` (hours each: not usable as utterances);
`voxpopuli.get_unlabelled_data` then cuts them into
`unlabelled_data/<lang>/<year>/<event_id>_<segment_no>.ogg` (16 kHz, about 15-30 s). This builder
reads the cut segments. Unlabelled: transcript and speaker are empty. Only a train split, unless
`validation_fraction` > 0 holds out whole sessions (event ids) by hash, so that no session
straddles train and validation.
"""
from __future__ import annotations

from collections.abc import Iterator

from etils import epath

from data_pipelines.corpora import base


def session_of(segment_path: epath.Path) -> str:
  """`20190114-0900-PLENARY-5_en_12.ogg` -> its session (event id) `20190114-0900-PLENARY-5_en`."""
  stem = segment_path.stem
  head, _, number = stem.rpartition("_")
  return head if head and number.isdigit() else stem


class Voxpopuli(base.CorpusBuilder, skip_registration=True):
  """VoxPopuli unlabelled European Parliament speech (23 languages), segmented by the release."""

  HOMEPAGE = "https://github.com/facebookresearch/voxpopuli"
  BUILDER_CONFIGS = [
      base.CorpusConfig(name="all", description="Every language found, train split only."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  With the facebookresearch/voxpopuli repository, for each subset (a language code, 10k, 100k,
  400k, or <lang>_v2):
    python -m voxpopuli.download_audios --root <manual_dir> --subset <subset>
    python -m voxpopuli.get_unlabelled_data --root <manual_dir> --subset <subset>
  so that manual_dir holds <manual_dir>/unlabelled_data/<lang>/<year>/<event_id>_<n>.ogg
  (raw_audios/ may stay beside it: it is not read). <lang> becomes the language field.
  """

  def _discover(self, manual_dir: epath.Path) -> dict[str, epath.Path]:
    root = manual_dir / "unlabelled_data"
    if not root.is_dir():
      hint = (" (raw_audios/ is there: run voxpopuli.get_unlabelled_data to cut it into segments)"
              if (manual_dir / "raw_audios").is_dir() else "")
      raise FileNotFoundError(f"voxpopuli: expected {root}{hint}")
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir()}

  def _utterances(self, language: str, lang_dir: epath.Path) -> Iterator[base.Utterance]:
    fraction = self.builder_config.validation_fraction
    for path in sorted(lang_dir.glob("*/*.ogg")):
      yield base.Utterance(
          split=base.train_or_validation(session_of(path), fraction), language=language,
          path=path, id=f"{language}/{path.parent.name}/{path.name}")
