"""AdamW with the wav2vec 2.0 schedule (linear warmup, linear decay to 0) and optional clipping."""
from __future__ import annotations

import functools
import re
from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """0 -> peak over warmup_steps, then linearly to 0 at total_steps (fairseq polynomial_decay, power 1)."""
  warmup_steps = max(min(warmup_steps, total_steps), 1)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_lr, warmup_steps),
       optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup_steps, 1))],
      boundaries=[warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   frozen: tuple[str, ...] = ()) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """optax chain from config.optimizer: [clip_by_global_norm] + adamw(schedule).

  frozen: regular expressions searched in "/"-joined parameter paths (an objective's
  frozen_params); those parameters get no update, no weight decay and no optimizer state.
  """
  schedule = learning_rate_schedule(config.peak_lr, config.warmup_steps, total_steps)
  parts = []
  if config.grad_clip_norm and config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay))
  optimizer = optax.chain(*parts)
  if frozen:
    optimizer = optax.multi_transform(
        {"train": optimizer, "frozen": optax.set_to_zero()},
        functools.partial(param_labels, patterns=tuple(re.compile(p) for p in frozen)))
  return optimizer, schedule


def param_labels(params: Any, patterns: tuple[re.Pattern, ...]) -> Any:
  """"frozen" for each parameter whose "/"-joined path matches one of `patterns`, else "train"."""
  def label(path, _):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path
                    if not isinstance(k, jax.tree_util.GetAttrKey))
    return "frozen" if any(p.search(name) for p in patterns) else "train"
  return jax.tree_util.tree_map_with_path(label, params)
