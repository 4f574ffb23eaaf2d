"""AdamW with the wav2vec 2.0 schedule (linear warmup, linear decay to 0) and optional clipping."""
from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """0 -> peak over warmup_steps, then linearly to 0 at total_steps (fairseq polynomial_decay, power 1)."""
  warmup_steps = max(min(warmup_steps, total_steps), 1)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_lr, warmup_steps),
       optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup_steps, 1))],
      boundaries=[warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """optax chain from config.optimizer: [clip_by_global_norm] + adamw(schedule)."""
  schedule = learning_rate_schedule(config.peak_lr, config.warmup_steps, total_steps)
  parts = []
  if config.grad_clip_norm and config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay))
  return optax.chain(*parts), schedule
