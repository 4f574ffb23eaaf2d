"""CoVoST 2 X -> English speech translation, read from manual_dir: the CoVoST 2 TSVs beside the
Common Voice (version 4) clips they refer to.

`covost_v2.<lang>_en.tsv` (from covost_v2.<lang>_en.tsv.tar.gz) lists each clip with at least the
columns path, translation, split; its split values are train, train_covost (both become "train"),
dev ("validation") and test, as facebookresearch/covost's get_covost_splits.py and the Hugging Face
covost2 reader use them. The transcript and speaker come from the TSV's own sentence / client_id
columns when present, else from Common Voice's `<lang>/validated.tsv` (joined on path). Examples
have the shared schema plus a "translation" text feature; unusable clips are skipped and counted
as for every corpus builder (base.py).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from etils import epath
import tensorflow_datasets as tfds

from data_pipelines.corpora import base
from data_pipelines.corpora.common_voice import clip_name, read_tsv
from data_pipelines.features import speech_features

_SPLITS = {"train": "train", "train_covost": "train", "dev": "validation", "test": "test"}
COVOST_COLUMNS = ("path", "translation", "split")  # what a covost_v2.<lang>_en.tsv must have
_TSV = re.compile(r"^covost_v2\.(?P<lang>[A-Za-z-]+)_en\.tsv$")
# The 21 X -> En directions of CoVoST 2 (the XLS-R paper's average is over these).
X_TO_EN = ("fr", "de", "es", "ca", "it", "ru", "zh-CN", "pt", "fa", "et", "mn", "nl", "tr", "ar",
           "sv-SE", "lv", "sl", "ta", "ja", "id", "cy")


@dataclasses.dataclass(frozen=True)
class TranslatedUtterance(base.Utterance):
  translation: str = ""

  def extra_features(self) -> dict[str, str]:
    return {"translation": self.translation}


def covost_features() -> tfds.features.FeaturesDict:
  features = dict(speech_features())
  features["translation"] = tfds.features.Text()
  return tfds.features.FeaturesDict(features)


class Covost2(base.CorpusBuilder, skip_registration=True):
  """CoVoST 2 X -> En (Common Voice 4 clips with English translations), every direction found."""

  HOMEPAGE = "https://github.com/facebookresearch/covost"
  BUILDER_CONFIGS = [base.CorpusConfig(name="all", description="Every X -> En direction found.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download Common Voice version 4 for each source language (https://commonvoice.mozilla.org/datasets)
  and the CoVoST 2 translations (https://dl.fbaipublicfiles.com/covost/covost_v2.<lang>_en.tsv.tar.gz),
  then arrange manual_dir as (the release folder cv-corpus-<version>/ may be one level in between):
    <manual_dir>/covost_v2.<lang>_en.tsv          (extracted from its .tar.gz)
    <manual_dir>/<lang>/clips/*.mp3
    <manual_dir>/<lang>/validated.tsv             (needed when the CoVoST TSV has no sentence column)
  <lang> as CoVoST names it (fr, de, zh-CN, sv-SE, ...); it becomes the language field.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or "").strip(), features=covost_features(),
        homepage=self.HOMEPAGE, metadata=tfds.core.MetadataDict())

  def _discover(self, manual_dir: epath.Path) -> dict[str, tuple[epath.Path, epath.Path]]:
    tsvs = {m["lang"]: p for p in sorted(manual_dir.iterdir()) if (m := _TSV.match(p.name))}
    roots = [manual_dir] + sorted(p for p in manual_dir.glob("cv-corpus-*") if p.is_dir())
    found = {}
    for lang, tsv in tsvs.items():
      clips = [root / lang for root in roots if (root / lang / "clips").is_dir()]
      if not clips:
        raise FileNotFoundError(f"covost2: {tsv.name} is in {manual_dir} but no {lang}/clips/ "
                                f"folder (Common Voice clips) is beside it")
      if len(clips) > 1:
        raise ValueError(f"covost2: language {lang!r} has clips in {clips}; keep one release")
      found[lang] = (tsv, clips[0])
    return found

  def _utterances(self, language: str, source: tuple[epath.Path, epath.Path]
                  ) -> Iterator[TranslatedUtterance]:
    tsv, lang_dir = source
    rows = read_tsv(tsv, columns=COVOST_COLUMNS)
    validated = {}
    if rows and ("sentence" not in rows[0] or "client_id" not in rows[0]):
      path = lang_dir / "validated.tsv"
      if not path.exists():
        raise FileNotFoundError(f"covost2: {tsv.name} has no sentence/client_id columns and "
                                f"{path} (Common Voice's) does not exist")
      validated = {r["path"]: r for r in read_tsv(path)}
    for row in rows:
      split = _SPLITS.get(row["split"])
      if split is None:
        raise ValueError(f"covost2: {tsv}: split {row['split']!r} of {row['path']} is not one of "
                         f"{sorted(_SPLITS)}")
      cv = validated.get(row["path"], {})
      clip = clip_name(row)
      yield TranslatedUtterance(
          split=split, language=language, path=lang_dir / "clips" / clip, id=f"{language}/{clip}",
          transcript=(row.get("sentence") or cv.get("sentence", "")).strip(),
          speaker=row.get("client_id") or cv.get("client_id", ""),
          translation=row["translation"].strip())

