"""PipelineConfig: everything that determines the pretraining batches.

Its own module so that both the input pipeline (data_pipelines/input_pipeline.py) and the source
resolution it builds on (data_pipelines/sources.py) can import it without importing each other.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from data_pipelines import buckets as buckets_lib


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything that determines the pretraining batches (two processes with equal configs agree)."""
  data_dir: str
  # (TFDS corpus name e.g. "common_voice" or "toy_speech/alpha", languages or None = all found).
  sources: tuple[tuple[str, tuple[str, ...] | None], ...]
  split: str = "train"
  alpha: float = 0.5
  max_sample_size: int = 320_000  # crop length in samples (20 s at 16 kHz)
  min_sample_size: int = 32_000  # shorter utterances are dropped (2 s)
  normalize: bool = True  # zero mean / unit variance over the full utterance, before the crop
  global_batch_size: int = 8
  seed: int = 0
  shuffle_files: bool = True  # reshuffled every epoch, deterministically from the seed
  interleave_cycle_length: int = 4  # files of one source read at once
  prefetch_batches: int = 2  # batches PipelineIterator prepares ahead in a thread (0: none)
  num_epochs: int | None = None  # None: repeat forever; 1: one pass (tests, evaluation)
  keep_ids: bool = False  # add "id" (utterance ids) to the batch
  # Duration buckets (data_pipelines/buckets.py): crop lengths in samples, ascending, and the global
  # rows of each; empty = one fixed crop of max_sample_size for global_batch_size rows.
  bucket_lengths: tuple[int, ...] = ()
  bucket_batch_sizes: tuple[int, ...] = ()
  bucket_mode: str = "crop"  # "crop": longest bucket an utterance fills; "pad": shortest it fits
  # Replay (continued pretraining on new languages): these (corpus, languages) get replay_fraction
  # of the utterances, n^alpha-balanced among themselves; `sources` share the rest the same way.
  replay_sources: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
  replay_fraction: float = 0.0

  @property
  def bucket_spec(self) -> buckets_lib.BucketSpec | None:
    if not self.bucket_lengths:
      return None
    return buckets_lib.BucketSpec(self.bucket_lengths, self.bucket_batch_sizes, self.bucket_mode,
                                  self.min_sample_size)

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any]) -> PipelineConfig:
    """From a dict or ml_collections.ConfigDict (`cfg.to_dict()`); lists become tuples."""
    values = dict(mapping)
    for key in ("sources", "replay_sources"):
      values[key] = tuple((corpus, None if langs is None else tuple(langs))
                          for corpus, langs in values.get(key, ()))
    for key in ("bucket_lengths", "bucket_batch_sizes"):
      values[key] = tuple(int(v) for v in values.get(key, ()))
    return cls(**values)
