"""tf.data input for downstream tasks over per-language TFDS splits ("train_<lang>", "test_<lang>").

Labels come from the task's labeler: the transcript (`CtcLabeler`: token ids of a `Vocabulary`),
the language or the speaker (`ClassLabeler`: class indices into name lists taken from the training
split), or a task's own (speech translation's targets). Batches have static
shapes: waveform float32 [batch, samples] (scaled to [-1, 1), normalised per utterance),
padding_mask bool [batch, samples] (True = padded), and either label int32 [batch] or labels
int32 [batch, max_label_length] + label_valid bool [batch, max_label_length]; example_valid bool
[batch] marks the filler rows that complete the last evaluation batch.

Training order is a pure function of (seed, step): the decoded split is cached in memory,
reshuffled each epoch with a fixed seed, and a resumed run skips the elements already consumed
(cheap for the corpus sizes downstream evaluation uses); crops are drawn with stateless keys.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines.features import SAMPLE_RATE, language_split_name, select_languages
from data_pipelines.input_pipeline import crop_and_pad, stream_key
from xlsr_jax.downstream.vocabulary import Vocabulary

_CROP_STREAM = 11


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """Text fields of every utterance of a split (no audio), in reading order."""
  ids: list[str]
  languages: list[str]
  speakers: list[str]
  transcripts: list[str]
  num_samples: list[int]
  translations: list[str] = dataclasses.field(default_factory=list)  # corpora with a translation

  def __len__(self) -> int:
    return len(self.ids)

  def values(self, field: str) -> list[str]:
    """Every utterance's `field`: "transcript", "language" or "speaker"."""
    return {"transcript": self.transcripts, "language": self.languages,
            "speaker": self.speakers}[field]


def split_names(builder: tfds.core.DatasetBuilder, split: str,
                languages: Sequence[str] | None) -> list[str]:
  """The builder's "<split>_<lang>" split names for `languages` (None = every language found)."""
  chosen = select_languages(list(builder.info.splits.keys()), split, languages,
                            builder.info.full_name)
  return [language_split_name(split, lang) for lang in chosen]


def read_split(builder: tfds.core.DatasetBuilder, names: Sequence[str], *,
               audio: bool = True) -> tf.data.Dataset:
  """The named splits concatenated in order, deterministically (no file shuffling)."""
  decoders = None if audio else {"audio": tfds.decode.SkipDecoding()}
  read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)
  datasets = [builder.as_dataset(split=name, shuffle_files=False, decoders=decoders,
                                 read_config=read_config) for name in names]
  ds = datasets[0]
  for other in datasets[1:]:
    ds = ds.concatenate(other)
  return ds


def index_split(builder: tfds.core.DatasetBuilder, names: Sequence[str]) -> SplitIndex:
  """One pass over the text fields (audio bytes skipped; lengths from the duration)."""
  fields = {k: [] for k in ("ids", "languages", "speakers", "transcripts", "num_samples")}
  if "translation" in builder.info.features:
    fields["translations"] = []
  for ex in tfds.as_numpy(read_split(builder, names, audio=False)):
    if "translations" in fields:
      fields["translations"].append(ex["translation"].decode())
    fields["ids"].append(ex["id"].decode())
    fields["languages"].append(ex["language"].decode())
    fields["speakers"].append(ex["speaker"].decode())
    fields["transcripts"].append(ex["transcript"].decode())
    fields["num_samples"].append(int(round(float(ex["duration"]) * SAMPLE_RATE)))
  return SplitIndex(**fields)


@dataclasses.dataclass(frozen=True)
class CtcLabeler:
  """An example's transcript as CTC labels (inside tf.data): labels int32 [max_label_length]
  (token ids of `vocabulary`, 0 after) and label_valid bool [max_label_length]."""
  vocabulary: Vocabulary
  max_label_length: int

  def label_text(self, transcript: str, language: str) -> str:
    """The text an example's CTC labels encode (the transcript itself here)."""
    del language
    return transcript

  def label_length(self, transcript: str, language: str) -> int:
    """Tokens of an example's labels (checked against max_label_length before training)."""
    return len(self.vocabulary.encode(self.label_text(transcript, language)))

  def __call__(self, ex: dict) -> dict:
    def encode(text, language):
      line = self.label_text(text.decode("utf-8"), language.decode())
      labels, valid = self.vocabulary.encode_batch([line], self.max_label_length)
      return labels[0], valid[0]
    labels, valid = tf.numpy_function(encode, [ex["transcript"], ex["language"]],
                                      [tf.int32, tf.bool])
    return {"labels": tf.ensure_shape(labels, [self.max_label_length]),
            "label_valid": tf.ensure_shape(valid, [self.max_label_length])}


@dataclasses.dataclass(frozen=True)
class ClassLabeler:
  """An example's `field` ("language", "speaker") as label int32 []: its index in class_names,
  -1 for a class the training split does not have."""
  field: str
  class_names: tuple[str, ...]

  def __call__(self, ex: dict) -> dict:
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(self.class_names),
                                            tf.range(len(self.class_names), dtype=tf.int32)), -1)
    return {"label": table.lookup(ex[self.field])}


Labeler = Callable[[dict], dict]  # CtcLabeler, ClassLabeler, a task's own: example -> label arrays


def _prepare(ex: dict, labeler: Labeler, key: tf.Tensor, max_samples: int, normalize: bool) -> dict:
  wave, length = crop_and_pad(ex["audio"], key, max_sample_size=max_samples, normalize=normalize)
  out = {"waveform": wave, "padding_mask": tf.range(max_samples) >= length,
         "example_valid": tf.constant(True)}
  out.update(labeler(ex))
  return out


def train_iterator(builder: tfds.core.DatasetBuilder, names: Sequence[str], labeler: Labeler, *,
                   batch_size: int, max_samples: int, seed: int, start_step: int = 0,
                   normalize: bool = True, drop_longer: bool = False,
                   keep_ids: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches from step `start_step` on (same batches as an uninterrupted run).

  Utterances longer than `max_samples` are randomly cropped, or dropped with `drop_longer` (ASR:
  a transcript cannot be cropped with its audio). Examples labelled -1 (`label`: an unknown class,
  a missing target) are dropped. With
  `keep_ids` only those utterances are read (a labelled budget, ML-SUPERB).
  """
  keys = ("audio", "language", "speaker", "transcript", "id") + (
      ("translation",) if "translation" in builder.info.features else ())
  ds = read_split(builder, names).map(lambda ex: {k: ex[k] for k in keys})
  if keep_ids is not None:
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(keep_ids) or [""]), tf.ones([max(len(keep_ids), 1)], tf.int32)), 0)
    ds = ds.filter(lambda ex: table.lookup(ex["id"]) > 0)
  if drop_longer:
    ds = ds.filter(lambda ex: tf.shape(ex["audio"])[0] <= max_samples)
  ds = ds.cache()
  ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.skip(start_step * batch_size).enumerate(start=start_step * batch_size)
  crop_key = tf.constant(stream_key(seed, _CROP_STREAM))
  ds = ds.map(lambda i, ex: _prepare(
      ex, labeler, tf.random.experimental.stateless_fold_in(crop_key, i), max_samples, normalize))
  if "label" in ds.element_spec:
    ds = ds.filter(lambda ex: ex["label"] >= 0)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
  return iter(tfds.as_numpy(ds))


def eval_batches(builder: tfds.core.DatasetBuilder, names: Sequence[str], labeler: Labeler, *,
                 batch_size: int, max_samples: int, normalize: bool = True
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One pass in order, every utterance (longer ones cropped at the start: set max_samples to the
  split's longest); the last batch is completed with filler rows (example_valid False)."""
  zero_key = tf.zeros([2], tf.int64)
  ds = read_split(builder, names).map(lambda ex: _prepare(ex, labeler, zero_key, max_samples,
                                                          normalize))
  for batch in tfds.as_numpy(ds.batch(batch_size).prefetch(2)):
    n = batch["waveform"].shape[0]
    if n < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
      batch["padding_mask"][n:] = True
    yield batch


def class_names_from(index: SplitIndex, field: str, task: str) -> tuple[str, ...]:
  """Sorted distinct `field` values of the training split (LID: languages, SID: speakers)."""
  names = tuple(sorted(set(index.values(field))))
  if names == ("",):
    raise ValueError(f"the training split has no {field} ids: {task.upper()} needs a corpus with "
                     f"{field}s")
  if len(names) < 2:
    raise ValueError(f"{task}: the training split has {len(names)} class(es) {names}; need >= 2")
  return names


def warn_unseen(train: tuple[str, ...], test: SplitIndex, field: str, task: str) -> None:
  unseen = sorted(set(test.values(field)) - set(train))
  if unseen:
    logging.warning("%s: %d test label(s) not in the training split are scored as errors: %s",
                    task, len(unseen), unseen[:10])
