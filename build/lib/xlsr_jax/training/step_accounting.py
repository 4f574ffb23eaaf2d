"""What the steps computed, from the host's view of each batch: padding, real audio, FLOPs, buckets.

Per log interval: `padding_fraction` (padded share of the samples computed), real and computed
audio seconds per second, analytic model FLOPs on all frames (MFU) and on each row's real length
only (useful MFU), and the share of steps each duration bucket had. Counted on this process's rows
(every process sees the same bucket sequence and, with even slices, a like mix of lengths).
"""
from __future__ import annotations

import collections
import functools

import ml_collections
import numpy as np

from data_pipelines.features import SAMPLE_RATE
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.training import flops as flops_lib


class StepAccounting:
  """Accumulates per-step batch facts between log steps; `flush(seconds)` gives the metrics."""

  def __init__(self, model: Wav2Vec2Config, objective: ml_collections.ConfigDict,
               peak_flops: float | None, num_devices: int, process_count: int = 1):
    self.model, self.objective = model, objective
    self.peak, self.num_devices, self.process_count = peak_flops, num_devices, process_count
    self._reset()

  def _reset(self):
    self.steps, self.samples, self.real_samples = 0, 0, 0
    self.flops, self.useful_flops = 0.0, 0.0
    self.buckets: collections.Counter = collections.Counter()

  @functools.lru_cache(maxsize=4096)
  def row_flops(self, num_samples: int) -> float:
    """Model FLOPs of one row of `num_samples` samples (masked bound M of that length)."""
    return flops_lib.row_train_flops(self.model, self.objective, num_samples)

  def add(self, lengths: np.ndarray, crop: int) -> None:
    """One step: this process's rows' real samples `lengths` [local_batch] in crops of `crop`."""
    lengths = np.minimum(np.asarray(lengths, np.int64), crop)
    self.steps += 1
    self.samples += crop * len(lengths) * self.process_count
    self.real_samples += int(lengths.sum()) * self.process_count
    self.flops += self.row_flops(int(crop)) * len(lengths) * self.process_count
    self.useful_flops += sum(self.row_flops(int(n)) for n in lengths) * self.process_count
    self.buckets[crop / SAMPLE_RATE] += 1

  def flush(self, seconds: float) -> dict[str, float]:
    """Metrics over the steps since the last flush, `seconds` of wall clock, then reset."""
    steps, seconds = max(self.steps, 1), max(seconds, 1e-9)
    out = {
        "padding_fraction": 1.0 - self.real_samples / max(self.samples, 1),
        "audio_seconds_per_second": self.samples / SAMPLE_RATE / seconds,
        "real_audio_seconds_per_second": self.real_samples / SAMPLE_RATE / seconds,
        "real_audio_seconds_per_step": self.real_samples / SAMPLE_RATE / steps,
        "model_tflops_per_step": self.flops / steps / 1e12,
        "useful_tflops_per_step": self.useful_flops / steps / 1e12,
    }
    if self.peak:
      denominator = self.peak * self.num_devices * seconds
      out["mfu_percent"] = 100 * self.flops / denominator
      out["useful_mfu_percent"] = 100 * self.useful_flops / denominator
    for crop_seconds, count in sorted(self.buckets.items()):
      out[f"bucket_share/{crop_seconds:g}s"] = count / steps
    self._reset()
    return out
