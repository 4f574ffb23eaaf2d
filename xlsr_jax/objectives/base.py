"""What every pretraining objective shares, and the interface the train step calls.

An objective (objectives/wav2vec2.py, objectives/best_rq.py) is one object: the pretraining model
it trains, what a step draws before its forward pass, the loss as sums and counts, the metrics
those sums give, the parameters the optimizer must never see and what an export keeps. The train
step (training/train_step.py) is written once against this interface; `objectives.make_objective`
is the one table from `objective.name` to an implementation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.objectives import masking

# waveform float32 [batch, samples] (zero after each row's end), lengths int32 [batch] (real samples).
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepShapes:
  """Static sizes derived from the crop length: frames T and the masked-frame bound M."""
  num_samples: int
  num_frames: int
  max_masked: int

  @classmethod
  def create(cls, model: Wav2Vec2Config, objective: ml_collections.ConfigDict, num_samples: int):
    frames = frame_lengths(num_samples, model)
    return cls(num_samples, frames, masking.max_masked_frames(
        frames, objective.mask_prob, objective.mask_length, objective.min_masks))


@flax.struct.dataclass
class MaskDraws:
  """The span mask of a batch with static shapes: mask_time bool [batch, T]; masked_indices int
  [batch, M] and valid bool [batch, M] (the masked frames listed, M a static bound); frame_lengths
  int [batch] (real frames per row, <= T)."""
  mask_time: jax.Array
  masked_indices: jax.Array
  valid: jax.Array
  frame_lengths: jax.Array


def draw_masks(rng: jax.Array, sample_lengths: jax.Array, model: Wav2Vec2Config,
               objective: ml_collections.ConfigDict, shapes: StepShapes) -> MaskDraws:
  """fairseq's span mask (objective.mask_prob / mask_length / min_masks) over each row's real frames."""
  lengths = frame_lengths(sample_lengths, model)
  mask_time = masking.compute_span_mask(
      rng, lengths, shapes.num_frames, mask_prob=objective.mask_prob,
      mask_length=objective.mask_length, min_masks=objective.min_masks,
      require_same_masks=objective.require_same_masks)
  indices, valid = masking.masked_positions(mask_time, shapes.max_masked)
  return MaskDraws(mask_time=mask_time, masked_indices=indices, valid=valid,
                   frame_lengths=jnp.minimum(lengths, shapes.num_frames))


def masking_sums(draws: Any) -> dict[str, jax.Array]:
  """What the mask covers: sum over rows of each row's masked share of its real frames, the rows
  that have real frames, and the real frames (for masked_fraction and real-frame throughput)."""
  lengths = draws.frame_lengths
  has_frames = lengths > 0
  share = jnp.sum(draws.mask_time, axis=-1) / jnp.maximum(lengths, 1)
  return dict(masked_share_sum=jnp.sum(jnp.where(has_frames, share, 0.0)),
              rows_with_frames=jnp.sum(has_frames).astype(jnp.float32),
              real_frames=jnp.sum(lengths).astype(jnp.float32))


def summarize_sums(sums: dict[str, jax.Array], per_batch: tuple[str, ...],
                   normalize: Any) -> dict[str, jax.Array]:
  """Step metrics from micro-batch sums [num_micro]: added (`per_batch` ones averaged), divided
  once by `normalize` (per masked frame), plus the masked fraction."""
  total = {k: jnp.mean(v) if k in per_batch else jnp.sum(v) for k, v in sums.items()}
  metrics = normalize(total)
  metrics["masked_fraction"] = total["masked_share_sum"] / jnp.maximum(total["rows_with_frames"], 1.0)
  return metrics


class Objective(Protocol):
  """A pretraining objective, as the train step, the trainer and the export see it.

  name: the config's objective.name. metric_names: the step's metrics (history.json names); every
  objective has loss, num_masked (the loss's denominator), masked_fraction and real_frames.
  frozen_params: regular expressions searched in "/"-joined parameter paths whose parameters the
  optimizer never sees (no update, no weight decay, no optimizer state). fresh_heads: top-level
  parameter trees that start fresh under train.init_from when the checkpoint has none.
  """
  name: str
  model_config: Wav2Vec2Config
  config: ml_collections.ConfigDict
  metric_names: tuple[str, ...]
  frozen_params: tuple[str, ...]
  fresh_heads: tuple[str, ...]

  def make_model(self) -> nn.Module:
    """The pretraining model (its params tree holds the encoder under "wav2vec2")."""

  def draw(self, rng: jax.Array, sample_lengths: jax.Array, shapes: StepShapes,
           noise_rng: jax.Array | None = None) -> Any:
    """What a step draws for the whole batch before its forward pass (a pytree of [batch, ...]):
    masks from `rng`; `noise_rng` (training only, None in evaluation) for sampling noise."""

  def loss_sums(self, params: Any, model: nn.Module, batch: Batch, draws: Any,
                rngs: dict[str, jax.Array], step: jax.Array, deterministic: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss sum of one (micro-)batch, its sums and counts incl. masking_sums)."""

  def summarize(self, sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """metric_names from micro-batch sums [num_micro]."""

  def step_metrics(self, step: jax.Array) -> dict[str, jax.Array]:
    """Metrics that depend on the step alone (the Gumbel temperature)."""

  def export_params(self, params: Any) -> Any:
    """What an export keeps of the pretraining params (unboxed)."""

  def forward_flops(self, size: Any) -> dict[str, int]:
    """Forward model FLOPs per component of a step of `size` (training/flops.StepSize)."""
