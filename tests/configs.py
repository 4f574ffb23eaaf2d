"""Small pretraining configs the tests share: the tiny preset cut to 2 layers, short spans."""
from __future__ import annotations

import ml_collections

from xlsr_jax.training.config_defaults import get_default_config


def small_config(**train) -> ml_collections.ConfigDict:
  """Defaults with a 2-layer tiny model, 8 negatives, spans of 3 at mask_prob 0.5, 10 steps."""
  c = get_default_config()
  c.model.num_hidden_layers = 2
  c.objective.num_negatives = 8
  c.objective.mask_length = 3
  c.objective.mask_prob = 0.5
  c.optimizer.warmup_steps = 2
  c.optimizer.peak_lr = 1e-3
  c.train.num_steps = 10
  c.train.update(train)
  return c
