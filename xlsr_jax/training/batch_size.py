"""Rows per step from the data config: the one place the global-batch formula lives.

A step holds `data.batch_seconds` of audio. Without duration buckets that is
batch_seconds x 16 kHz / max_sample_size crops; with buckets (data/buckets.py) each bucket's
rows keep the same audio per step, rounded to a multiple of the data-parallel shards x
grad_accum_steps and the processes, so that every bucket divides as a fixed batch must.
"""
from __future__ import annotations

import ml_collections

from data_pipelines import buckets as buckets_lib
from data_pipelines.features import SAMPLE_RATE


def global_batch_rows(config: ml_collections.ConfigDict, multiple: int = 1) -> int:
  """Utterances per step: batch_seconds in crops of max_sample_size samples (0 if under one
  crop), or with duration buckets the smallest bucket's rows rounded to `multiple`."""
  d = config.data
  if d.bucket_seconds:
    return min(buckets_lib.bucket_batch_sizes(d.bucket_seconds, d.batch_seconds, multiple))
  return int(round(d.batch_seconds * SAMPLE_RATE / d.max_sample_size))


def bucket_spec(config: ml_collections.ConfigDict, multiple: int = 1
                ) -> buckets_lib.BucketSpec | None:
  """Duration buckets from data.bucket_seconds (None when empty): rows per bucket keep
  data.batch_seconds of audio per step, rounded to a multiple of the data-parallel shards."""
  d = config.data
  if not d.bucket_seconds:
    return None
  return buckets_lib.make_spec(d.bucket_seconds, d.batch_seconds, mode=d.bucket_mode,
                               min_sample_size=d.min_sample_size, multiple=multiple)


def largest_crop(config: ml_collections.ConfigDict) -> int:
  """Samples of the longest row a step can have (the largest bucket, or max_sample_size)."""
  spec = bucket_spec(config)
  return spec.lengths[-1] if spec else config.data.max_sample_size


def batch_multiple(data_parallel: int, grad_accum_steps: int, process_count: int) -> int:
  """What a step's rows must be a multiple of: data x fsdp devices x micro-steps, and processes."""
  return buckets_lib.lcm(data_parallel * grad_accum_steps, process_count)
