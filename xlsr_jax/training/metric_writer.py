"""Metric logging: TensorBoard (tensorboardX) and a console progress line, from process 0 only."""
from __future__ import annotations

import os
import sys
import time
from typing import Mapping

import jax

try:
  from tensorboardX import SummaryWriter
except ImportError:  # pragma: no cover - tensorboardX is in requirements.txt
  SummaryWriter = None


class MetricWriter:
  """Writes scalars to `<workdir>/tensorboard` and prints one progress line per log step."""

  def __init__(self, workdir: str, total_steps: int):
    self.is_chief = jax.process_index() == 0
    self.total_steps = total_steps
    self.log_dir = os.path.join(workdir, "tensorboard")
    self.writer = SummaryWriter(self.log_dir) if (self.is_chief and SummaryWriter) else None

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train",
            console: bool = True) -> None:
    """To TensorBoard as <prefix>/<name>; console=False skips the progress line."""
    if not self.is_chief:
      return
    if self.writer is not None:
      for name, value in scalars.items():
        self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
      self.writer.flush()
    if not console:
      return
    shown = ("loss", "contrastive_loss_bits", "accuracy", "code_perplexity", "temperature",
             "learning_rate", "grad_norm", "masked_fraction", "padding_fraction",
             "steps_per_second", "real_audio_seconds_per_second", "mfu_percent",
             "useful_mfu_percent", "hours_seen")
    parts = [f"{k}={_fmt(scalars[k])}" for k in shown if k in scalars]
    bar = _bar(step, self.total_steps) if prefix == "train" else prefix
    print(f"{bar} step {step}/{self.total_steps} " + " ".join(parts), flush=True, file=sys.stdout)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _fmt(value: float) -> str:
  value = float(value)
  if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
    return f"{value:.3e}"
  return f"{value:.4g}"


def _bar(step: int, total: int, width: int = 20) -> str:
  filled = int(width * step / max(total, 1))
  return "[" + "#" * filled + "." * (width - filled) + "]"


class Throughput:
  """Steps/s and seconds between log steps (host wall clock), and this process's CPU seconds (all
  threads: the step's XLA threads, the input pipeline, logging) over the same interval."""

  def __init__(self, start_step: int):
    self.last_time, self.last_cpu, self.last_step = time.perf_counter(), time.process_time(), start_step

  def update(self, step: int) -> tuple[float, float, float]:
    """(steps per second, wall seconds, process CPU seconds) since the previous update."""
    now, cpu = time.perf_counter(), time.process_time()
    steps, seconds = step - self.last_step, max(now - self.last_time, 1e-9)
    cpu_seconds = cpu - self.last_cpu
    self.last_time, self.last_cpu, self.last_step = now, cpu, step
    return steps / seconds, seconds, cpu_seconds
