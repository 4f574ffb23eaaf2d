"""Which TFDS splits a pretraining run reads, and reading them record by record.

`resolve_sources` turns config.sources (corpus, languages) into one `Source` per (corpus,
language) split with its hours and its two-level sampling weight (p ~ n^alpha, data_pipelines/
sampling.py); `read_split` reads a (sub)split's TFRecord files sequentially, so a tf.data
iterator over it saves file positions only; `split_lengths` is the cached per-split index of
utterance lengths that duration buckets assign utterances from. `data_pipelines/input_pipeline.py`
builds the mixed, cropped batches on top.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import build_outputs, sampling
from data_pipelines.features import SAMPLE_RATE, language_split_name, select_languages
from data_pipelines.pipeline_config import PipelineConfig

# Bytes per stored sample when estimating hours from a split's size (for builds that record no
# hours), by the audio feature's encoding: "none" is an int64 varint list (1-3 bytes when >= 0,
# 10 when < 0: 5.5 on synthetic_speech; builds before features.audio_feature), "bytes" raw int16,
# "zlib" compressed raw int16 (features.audio_feature: 1.72 on synthetic_speech).
_BYTES_PER_SAMPLE = {"none": 5.5, "bytes": 2.0, "zlib": 1.72}
_LENGTHS_DIR = build_outputs.LENGTHS_DIR  # per-split utterance-length index, beside the dataset's files


@dataclasses.dataclass(frozen=True)
class Source:
  """One (corpus, language) split that the pipeline reads; ids index the batch's id features."""
  corpus: str
  language: str  # sanitised, as in the split name
  split_name: str
  hours: float
  num_examples: int
  corpus_id: int
  language_id: int
  weight: float


def split_hours(builder: tfds.core.DatasetBuilder, split_name: str) -> float:
  """Hours of audio in one split: `metadata["hours"][split_name]` if recorded, else from its bytes."""
  metadata = builder.info.metadata or {}
  recorded = metadata.get("hours", {})
  if split_name in recorded:
    return float(recorded[split_name])
  if split_name not in builder.info.splits:
    raise KeyError(f"{builder.info.full_name}: no split {split_name!r}; has "
                   f"{sorted(builder.info.splits.keys())}")
  # Tensor writes the encoding's value ("zlib"), Audio its name ("NONE").
  encoding = (builder.info.features["audio"].to_json_content().encoding or "none").lower()
  if encoding not in _BYTES_PER_SAMPLE:
    raise ValueError(f"{builder.info.full_name}: audio encoding {encoding!r} is not one of "
                     f"{sorted(_BYTES_PER_SAMPLE)}; record metadata['hours'] in the build")
  bytes_per_sample = _BYTES_PER_SAMPLE[encoding]
  return builder.info.splits[split_name].num_bytes / bytes_per_sample / SAMPLE_RATE / 3600


def load_builders(config: PipelineConfig) -> dict[str, tfds.core.DatasetBuilder]:
  """`{corpus: builder}` for every corpus of config.sources and replay_sources, from data_dir."""
  return {corpus: tfds.builder(corpus, data_dir=config.data_dir)
          for corpus, _ in config.sources + config.replay_sources}


def resolve_sources(config: PipelineConfig,
                    builders: Mapping[str, tfds.core.DatasetBuilder] | None = None) -> list[Source]:
  """The (corpus, language) splits of `config`, with their hours and two-level weights (replay
  sources: replay_fraction of the total, the other sources the rest, each group n^alpha-balanced)."""
  builders = builders or load_builders(config)
  found = []  # (corpus_id, corpus, language, split_name, hours, num_examples)
  for corpus_id, (corpus, languages) in enumerate(config.sources + config.replay_sources):
    builder = builders[corpus]
    split_names = list(builder.info.splits.keys())
    chosen = select_languages(split_names, config.split, languages,
                              f"{corpus} in {config.data_dir}")
    for lang in chosen:
      split_name = language_split_name(config.split, lang)
      found.append((corpus_id, corpus, lang, split_name, split_hours(builder, split_name),
                    builder.info.splits[split_name].num_examples))
  keys = [(corpus, lang) for _, corpus, lang, *_ in found]
  if len(set(keys)) != len(keys):
    raise ValueError(f"config.sources lists a (corpus, language) twice: {keys}")
  replay = lambda corpus_id: corpus_id >= len(config.sources)
  weights = sampling.two_level_weights(
      {(c, l): h for cid, c, l, _, h, _ in found if not replay(cid)}, config.alpha)
  if config.replay_sources:
    r = config.replay_fraction
    weights = {k: (1 - r) * w for k, w in weights.items()} | {
        k: r * w for k, w in sampling.two_level_weights(
            {(c, l): h for cid, c, l, _, h, _ in found if replay(cid)}, config.alpha).items()}
  language_ids = {lang: i for i, lang in enumerate(sorted({lang for _, _, lang, *_ in found}))}
  return [Source(corpus=c, language=l, split_name=s, hours=h, num_examples=n, corpus_id=cid,
                 language_id=language_ids[l], weight=weights[(c, l)])
          for cid, c, l, s, h, n in found]



def process_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """(start, end) of this process's even slice of a split's examples (the first
  num_examples % process_count processes get one extra example, as `tfds.even_splits`)."""
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def process_split(split_name: str, num_examples: int, process_index: int,
                  process_count: int) -> str:
  """`"train_en[start:end]"`: this process's `process_range` of the split; error if it is empty."""
  start, end = process_range(num_examples, process_index, process_count)
  if end == start:
    raise ValueError(
        f"split {split_name!r} has {num_examples} examples, fewer than the {process_count} "
        "processes: every process must read every language (sample_from_datasets cannot mix an "
        "empty source); drop this language or use fewer processes")
  return f"{split_name}[{start}:{end}]"


def _shard_offsets(builder: tfds.core.DatasetBuilder, split_name: str) -> dict[str, int]:
  """{shard file name: index of its first example in the whole split}."""
  offsets, total = {}, 0
  for fi in builder.info.splits[split_name].file_instructions:
    offsets[os.path.basename(os.fspath(fi.filename))] = total
    total += fi.examples_in_shard
  return offsets


def read_split(builder: tfds.core.DatasetBuilder, split: str, *, shuffle_seed: int | None,
               cycle_length: int, keep: np.ndarray | None = None) -> tf.data.Dataset:
  """One pass over a (sub)split's TFRecord files: {"audio": int16 [samples], "id": string}.

  Sequential on purpose (no parallel or prefetching op, unlike `as_dataset`), so the iterator
  state is file positions only. With `shuffle_seed`, files come in a new seeded order each pass.
  keep: optional bool [examples in the whole split]; records whose index in the split is False
  are skipped before they are decoded (bucket streams read only their bucket's utterances).
  """
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise ValueError(f"{builder.info.full_name}: stored as {builder.info.file_format}; the "
                     "pretraining pipeline reads TFRecord files only")
  instructions = [fi for fi in builder.info.splits[split].file_instructions if fi.take > 0]
  offsets = _shard_offsets(builder, split.split("[")[0])
  paths = tf.constant([os.fspath(fi.filename) for fi in instructions])
  skips = tf.constant([fi.skip for fi in instructions], tf.int64)
  takes = tf.constant([fi.take for fi in instructions], tf.int64)
  firsts = tf.constant([offsets[os.path.basename(os.fspath(fi.filename))] + fi.skip
                        for fi in instructions], tf.int64)  # split index of each file's first read
  files = tf.data.Dataset.range(len(instructions))
  if shuffle_seed is not None:
    files = files.shuffle(len(instructions), seed=shuffle_seed, reshuffle_each_iteration=True)
  records = files.interleave(
      lambda j: tf.data.TFRecordDataset(paths[j]).skip(skips[j]).take(takes[j]).enumerate(
      ).map(lambda k, record: (firsts[j] + k, record)),
      cycle_length=max(1, min(cycle_length, len(instructions))), block_length=1)
  if keep is not None:
    keep_table = tf.constant(np.asarray(keep, bool))
    records = records.filter(lambda index, record: tf.gather(keep_table, index))
  features = tfds.decode.PartialDecoding({"audio": True, "id": True}).extract_features(
      builder.info.features)
  return records.map(lambda index, record: features.deserialize_example(record))


def split_lengths(builder: tfds.core.DatasetBuilder, split_name: str) -> np.ndarray:
  """Samples of every utterance of a whole split, in split order: int32 [num_examples].

  Read once (decoding every record) and cached as `<dataset dir>/xlsr_jax_lengths/<split>.npy`
  (a read-only dataset directory is re-read each time, with a warning).
  """
  path = os.path.join(os.fspath(builder.data_dir), _LENGTHS_DIR, f"{split_name}.npy")
  expected = builder.info.splits[split_name].num_examples
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, "rb") as f:
      lengths = np.load(f)
    if len(lengths) == expected:
      return lengths
  ds = read_split(builder, split_name, shuffle_seed=None, cycle_length=1)
  ds = ds.map(lambda ex: tf.shape(ex["audio"])[0]).batch(4096)
  lengths = np.concatenate([b.numpy() for b in ds] or [np.zeros([0], np.int32)]).astype(np.int32)
  if len(lengths) != expected:
    raise ValueError(f"{builder.info.full_name} {split_name}: read {len(lengths)} utterances, the "
                     f"dataset info says {expected}")
  try:
    tf.io.gfile.makedirs(os.path.dirname(path))
    partial = f"{path}.{os.getpid()}.partial"  # written whole, then renamed: readers never see half
    with tf.io.gfile.GFile(partial, "wb") as f:
      np.save(f, lengths)
    tf.io.gfile.rename(partial, path, overwrite=True)
  except (OSError, tf.errors.OpError) as e:
    logging.warning("could not cache the length index of %s %s at %s (%s): it is re-read on "
                    "every start", builder.info.full_name, split_name, path, e)
  return lengths
