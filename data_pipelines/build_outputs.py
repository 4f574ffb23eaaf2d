"""What every corpus build leaves beside its data for a pod to read, with or without Apache Beam.

The per-split utterance-length index (`<dataset dir>/xlsr_jax_lengths/<split>.npy`, int32
[num_examples] in split order) that the duration buckets assign utterances from
(`sources.split_lengths`). The build knows every kept utterance's length, so it writes the index
itself instead of leaving the first pretraining run to decode the whole split once.

Split order: TFDS stores a split's examples sorted by the md5 hash of their key salted with the
split name (`tfds.core.hashing.Hasher(split).hash_key(key)`), in the single-process writer and in
the Beam writer alike; the index is written in that order and checked against the first and last
example of every shard file (one record each), so a TFDS release that ordered differently would
fall back to the old first-read index instead of a wrong one.

No apache_beam import here: single-process builds use it too (the Beam side is `beam_build.py`).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing
from etils import epath

_LOG = logging.getLogger(__name__)
LENGTHS_DIR = "xlsr_jax_lengths"  # also read by data_pipelines.sources.split_lengths


def lengths_path(dataset_dir: str | os.PathLike, split_name: str) -> epath.Path:
  return epath.Path(dataset_dir) / LENGTHS_DIR / f"{split_name}.npy"


def split_order(split_name: str, keys: Iterable[str]) -> list[int]:
  """Positions of `keys` in the order TFDS stores them in split `split_name` (hash of the key)."""
  hasher = hashing.Hasher(split_name)
  keys = list(keys)
  return sorted(range(len(keys)), key=lambda i: hasher.hash_key(keys[i]))


def _shard_ends_match(builder: tfds.core.DatasetBuilder, split_name: str,
                      ordered_ids: list[str]) -> bool:
  """Whether the first and last record of every shard of the split have the ids expected there."""
  features = tfds.decode.PartialDecoding({"id": True}).extract_features(builder.info.features)
  position = 0
  for fi in builder.info.splits[split_name].file_instructions:
    n = fi.examples_in_shard
    records = list(tf.data.TFRecordDataset(os.fspath(fi.filename)).take(1)) + (
        list(tf.data.TFRecordDataset(os.fspath(fi.filename)).skip(n - 1).take(1)) if n > 1 else [])
    got = [features.deserialize_example(r)["id"].numpy().decode() for r in records]
    want = [ordered_ids[position]] + ([ordered_ids[position + n - 1]] if n > 1 else [])
    if got != want:
      return False
    position += n
  return position == len(ordered_ids)


def write_length_indexes(builder: tfds.core.DatasetBuilder,
                         kept: Mapping[str, list[tuple[str, int]]]) -> dict[str, int]:
  """Writes `<split>.npy` (samples per utterance, split order) for every split of `kept`
  ({split: [(key, samples)]}, any order); returns {split: shards} of the written splits.

  The key must be the example's "id" (true of every builder here). A split whose count or shard
  ends disagree is not indexed (warning): `sources.split_lengths` then reads it on first use.
  """
  shards = {}
  for split_name, pairs in sorted(kept.items()):
    if split_name not in builder.info.splits:
      continue
    info = builder.info.splits[split_name]
    order = split_order(split_name, [k for k, _ in pairs])
    ordered_ids = [pairs[i][0] for i in order]
    if len(pairs) != info.num_examples or not _shard_ends_match(builder, split_name, ordered_ids):
      _LOG.warning("%s %s: the kept utterances do not match the written shards; no length index "
                   "written (the first bucketed run builds it)", builder.name, split_name)
      continue
    lengths = np.asarray([pairs[i][1] for i in order], np.int32)
    path = lengths_path(builder.data_dir, split_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
      np.save(f, lengths)
    shards[split_name] = len(info.file_instructions)
  return shards


def beam_requested(download_config: Any) -> bool:
  """Whether TFDS was given a Beam runner or pipeline options (no apache_beam import)."""
  return bool(getattr(download_config, "beam_runner", None)
              or getattr(download_config, "beam_options", None))


def beam_pipeline_options(flags: str) -> Any:
  """Beam PipelineOptions from a `--beam_pipeline_options` flag (None when empty); exit 2 with
  one line when apache-beam is not installed."""
  if not flags:
    return None
  try:
    from data_pipelines import beam_build
  except ImportError as e:
    print(f"error: --beam_pipeline_options needs Apache Beam ({e}); install it with "
          f"pip install -r requirements-beam.txt", file=sys.stderr)
    raise SystemExit(2) from None
  return beam_build.pipeline_options(flags)


def collect_beam_records(name: str, dataset_dir: epath.Path, report: Any,
                         metrics: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
  """After a Beam build: the workers' records added to `report` (checked against the Beam
  metrics), the work and record files removed; returns {split: [(key, samples)]}."""
  from data_pipelines import beam_build
  before_kept, before_skipped = report.kept, len(report.skipped)
  kept = beam_build.read_records(dataset_dir / beam_build.RECORDS_DIR, report)
  beam_build.check_metrics(name, metrics, report.kept - before_kept,
                           len(report.skipped) - before_skipped)
  beam_build.remove(dataset_dir / beam_build.WORK_DIR, dataset_dir / beam_build.RECORDS_DIR)
  return kept

