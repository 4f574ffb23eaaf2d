"""The one TFDS feature schema shared by every speech builder, and the per-language split names.

Every corpus builder writes the same features so the input pipeline can mix corpora freely:
  audio      int16 waveform at 16 kHz, shape [samples] (stored zlib-compressed: `audio_feature`)
  language   language code as the corpus names it (e.g. "en", "pt-br", "cmn")
  corpus     builder name (e.g. "common_voice", "synthetic_speech")
  speaker    speaker id, "" when unknown
  transcript text, "" when the corpus is unlabelled
  duration   seconds, float32
  id         corpus-unique utterance id (relative path or generated key)
Splits are per language: "<split>_<lang>" (e.g. "train_en", "test_pt_br") so that the input
pipeline can build one tf.data source per (corpus, language) without reading other languages.
"""
from __future__ import annotations

import re

import numpy as np
import tensorflow_datasets as tfds

SAMPLE_RATE = 16_000
AUDIO_ENCODING = tfds.features.Encoding.ZLIB


def audio_feature() -> tfds.features.Tensor:
  """The `audio` feature: int16 `[samples]` at SAMPLE_RATE, written as zlib-compressed raw bytes.

  Readers get the same int16 `[samples]` tensor as from `tfds.features.Audio`, which would write
  each sample as an int64 varint (about 5.5 bytes a sample on speech); raw bytes take 2.0 and zlib
  1.72 on synthetic_speech, decoded at about 55M samples/s per core (3,400x real time).
  `Audio(dtype=int16, encoding=ZLIB)` cannot be used: its numpy path skips the encoding.
  """
  return tfds.features.Tensor(
      shape=(None,), dtype=np.int16, encoding=AUDIO_ENCODING,
      doc=tfds.features.Documentation(desc=f"mono waveform at {SAMPLE_RATE} Hz",
                                      value_range="int16"))


def speech_features() -> tfds.features.FeaturesDict:
  """The shared feature dict (16 kHz int16 audio plus metadata)."""
  return tfds.features.FeaturesDict({
      "audio": audio_feature(),
      "language": tfds.features.Text(),
      "corpus": tfds.features.Text(),
      "speaker": tfds.features.Text(),
      "transcript": tfds.features.Text(),
      "duration": tfds.features.Scalar(dtype=np.float32),
      "id": tfds.features.Text(),
  })


def language_split_name(split: str, language: str) -> str:
  """`("train", "pt-BR") -> "train_pt_br"`: a TFDS-valid split name for one language."""
  lang = re.sub(r"[^0-9a-zA-Z]+", "_", language).strip("_").lower()
  if not lang:
    raise ValueError(f"language code {language!r} has no letters or digits")
  return f"{split}_{lang}"


def languages_in_splits(split_names, split: str) -> list[str]:
  """Inverse of `language_split_name` over a builder's split names: the sanitised languages of `split`."""
  prefix = f"{split}_"
  return sorted(name[len(prefix):] for name in split_names if name.startswith(prefix))


def select_languages(split_names, split: str, languages, where: str) -> list[str]:
  """The sanitised languages of `split` to read: `languages` (None = every one in `split_names`).

  Errors name `where` (the corpus and its location), the missing languages and the available ones.
  """
  available = languages_in_splits(split_names, split)
  if languages is None:
    chosen = available
  else:
    chosen = [language_split_name(split, lang)[len(split) + 1:] for lang in languages]
    missing = sorted(set(chosen) - set(available))
    if missing:
      raise ValueError(f"{where}: no {split!r} split for languages {missing}; it has {available}")
  if not chosen:
    raise ValueError(f"{where}: no splits named '{split}_<lang>'; splits are {sorted(split_names)}")
  return chosen
