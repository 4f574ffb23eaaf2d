"""Duration buckets: a few static crop lengths, one per step, so compute goes to real audio.

fairseq pretraining crops every utterance of a batch to the batch's shortest one and batches
utterances of similar length; on TPU pods it pads to a few fixed lengths (`num_batch_buckets`).
Here every step draws one bucket (crop length `L_b`, batch `B_b` so that `B_b * L_b` stays
`batch_seconds` of audio) from a seed shared by all processes, so every host builds the same
static shape at the same step. An utterance belongs to one bucket:
  crop: the longest bucket it fills (it is cropped to that length; fairseq's crop-to-shortest);
  pad:  the shortest bucket it fits in (padded up to it; longer than the longest: cropped to it).
Shorter than `min_sample_size` (or, in crop mode, than the shortest bucket): dropped and counted.

Proportions: today's pipeline draws each utterance's (corpus, language) source with the two-level
n^alpha weight w_s. With buckets, step bucket b is drawn with probability proportional to
P(b) / B_b, where P(b) = sum_s w_s f_s(b) and f_s(b) is the share of source s's kept utterances
that fall in b; inside a bucket the source is drawn with probability w_s f_s(b) / P(b). Every
utterance then still comes from source s with probability w_s (see `expected_source_shares`).

Pure numpy; the tf.data side is in input_pipeline.py.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from data_pipelines.features import SAMPLE_RATE

MODES = ("crop", "pad")
DROPPED = -1


@dataclasses.dataclass(frozen=True)
class BucketSpec:
  """Static crop lengths (samples, ascending), how utterances are assigned, and batch sizes."""
  lengths: tuple[int, ...]  # samples per row of each bucket, ascending
  batch_sizes: tuple[int, ...]  # global rows per step of each bucket
  mode: str = "crop"
  min_sample_size: int = 0  # utterances shorter than this are dropped in both modes

  def __post_init__(self):
    if not self.lengths:
      raise ValueError("BucketSpec: at least one bucket length is needed")
    if list(self.lengths) != sorted(set(self.lengths)):
      raise ValueError(f"BucketSpec: bucket lengths must be distinct and ascending, got "
                       f"{self.lengths}")
    if len(self.batch_sizes) != len(self.lengths) or min(self.batch_sizes) < 1:
      raise ValueError(f"BucketSpec: one batch size >= 1 per bucket expected, got "
                       f"{self.batch_sizes} for {self.lengths}")
    if self.mode not in MODES:
      raise ValueError(f"BucketSpec: mode {self.mode!r} is not one of {MODES}")

  @property
  def num_buckets(self) -> int:
    return len(self.lengths)


def bucket_batch_sizes(bucket_seconds: Sequence[float], batch_seconds: float,
                       multiple: int = 1) -> tuple[int, ...]:
  """Rows per step of each bucket: batch_seconds / bucket_seconds, rounded to a multiple of
  `multiple` (the data-parallel shards x processes), at least one multiple."""
  if multiple < 1:
    raise ValueError(f"bucket_batch_sizes: multiple must be >= 1, got {multiple}")
  sizes = []
  for seconds in bucket_seconds:
    if seconds <= 0:
      raise ValueError(f"bucket_batch_sizes: bucket lengths must be > 0 s, got {seconds}")
    sizes.append(max(1, int(round(batch_seconds / seconds / multiple))) * multiple)
  return tuple(sizes)


def make_spec(bucket_seconds: Sequence[float], batch_seconds: float, *, mode: str = "crop",
              min_sample_size: int = 0, multiple: int = 1) -> BucketSpec:
  """BucketSpec from lengths in seconds (sorted here) and the audio seconds per step."""
  seconds = sorted(float(s) for s in bucket_seconds)
  lengths = tuple(int(round(s * SAMPLE_RATE)) for s in seconds)
  return BucketSpec(lengths=lengths, batch_sizes=bucket_batch_sizes(seconds, batch_seconds, multiple),
                    mode=mode, min_sample_size=min_sample_size)


def assign(lengths: np.ndarray, spec: BucketSpec) -> np.ndarray:
  """Bucket index of each utterance (`DROPPED` = -1 for too short): int32 [num_utterances]."""
  lengths = np.asarray(lengths, np.int64)
  edges = np.asarray(spec.lengths, np.int64)
  if spec.mode == "crop":
    index = np.searchsorted(edges, lengths, side="right") - 1  # longest bucket <= length
  else:
    index = np.minimum(np.searchsorted(edges, lengths, side="left"), len(edges) - 1)
  index = np.where(lengths < spec.min_sample_size, DROPPED, index)
  return index.astype(np.int32)


def bucket_counts(lengths: np.ndarray, spec: BucketSpec) -> np.ndarray:
  """Utterances per bucket, int64 [num_buckets] (dropped ones not counted)."""
  index = assign(lengths, spec)
  return np.bincount(index[index >= 0], minlength=spec.num_buckets).astype(np.int64)


def source_bucket_shares(counts: Mapping[object, np.ndarray]) -> dict[object, np.ndarray]:
  """f_s(b): each source's kept utterances per bucket as shares summing to 1 (0s if none kept)."""
  out = {}
  for key, c in counts.items():
    c = np.asarray(c, np.float64)
    out[key] = c / c.sum() if c.sum() > 0 else np.zeros_like(c)
  return out


def step_probabilities(weights: Mapping[object, float], shares: Mapping[object, np.ndarray],
                       spec: BucketSpec) -> np.ndarray:
  """Probability of each bucket being a step's bucket: P(b) / B_b normalised, float64 [buckets].

  weights: the n^alpha source weights w_s; shares: f_s(b) from `source_bucket_shares`.
  """
  utterance_share = sum(weights[s] * np.asarray(shares[s]) for s in weights)  # P(b)
  if not np.any(utterance_share > 0):
    raise ValueError("no utterance falls in any bucket: every source is shorter than the "
                     f"shortest bucket ({spec.lengths[0] / SAMPLE_RATE:g} s)")
  per_step = utterance_share / np.asarray(spec.batch_sizes, np.float64)
  return per_step / per_step.sum()


def within_bucket_weights(weights: Mapping[object, float], shares: Mapping[object, np.ndarray],
                          bucket: int) -> dict[object, float]:
  """Source weights inside one bucket, w_s f_s(b) / P(b); sources absent from b are left out."""
  raw = {s: weights[s] * float(shares[s][bucket]) for s in weights}
  total = sum(raw.values())
  return {s: w / total for s, w in raw.items() if w > 0} if total > 0 else {}


def expected_source_shares(weights: Mapping[object, float], shares: Mapping[object, np.ndarray],
                           spec: BucketSpec) -> dict[object, float]:
  """Share of all utterances that come from each source under bucketed sampling (should be w_s
  among sources with kept utterances): sum_b P_step(b) B_b within_b(s), normalised."""
  probs = step_probabilities(weights, shares, spec)
  totals = {s: 0.0 for s in weights}
  for b in range(spec.num_buckets):
    for s, w in within_bucket_weights(weights, shares, b).items():
      totals[s] += probs[b] * spec.batch_sizes[b] * w
  norm = sum(totals.values())
  return {s: v / norm for s, v in totals.items()}


def padding_fraction(lengths: np.ndarray, crop: int) -> float:
  """Padded share of the samples computed when rows of `lengths` are cut or padded to `crop`."""
  lengths = np.minimum(np.asarray(lengths, np.int64), crop)
  return 1.0 - float(lengths.sum()) / (crop * max(len(lengths), 1))


def lcm(*values: int) -> int:
  return math.lcm(*[int(v) for v in values])
