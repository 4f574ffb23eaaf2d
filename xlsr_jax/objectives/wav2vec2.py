"""The wav2vec 2.0 / XLS-R objective: contrastive task over Gumbel-quantized targets (objectives/losses.py).

Draws: the span mask, K distractors per masked frame and (training) the quantizer's Gumbel noise,
all from the step's key with static shapes, so k micro-batches see exactly what one batch would.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from xlsr_jax.models import Wav2Vec2ForPreTraining
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.objectives import losses, negatives
from xlsr_jax.objectives.base import Batch, StepShapes, draw_masks, masking_sums, summarize_sums
from xlsr_jax.training import flops


def gumbel_temperature(step: jax.Array, objective: ml_collections.ConfigDict) -> jax.Array:
  """tau = max(start * decay^step, end)."""
  tau = objective.gumbel_start * jnp.power(objective.gumbel_decay, step.astype(jnp.float32))
  return jnp.maximum(tau, objective.gumbel_end)


@flax.struct.dataclass
class StepDraws:
  """What a wav2vec 2.0 step draws before its forward pass, with static shapes.

  mask_time bool [batch, T] (masked frames); masked_indices int [batch, M] and valid bool
  [batch, M] (the masked frames listed, M a static bound); negative_indices int [batch, M, K]
  (distractors, indices into M); frame_lengths int [batch] (real frames per row, <= T);
  gumbel_noise float32 [batch, M, G, V] (the quantizer's noise; None in evaluation, argmax codes).
  """
  mask_time: jax.Array
  masked_indices: jax.Array
  valid: jax.Array
  negative_indices: jax.Array
  frame_lengths: jax.Array
  gumbel_noise: jax.Array | None = None


def sample_draws(rng: jax.Array, sample_lengths: jax.Array, model: Wav2Vec2Config,
                 objective: ml_collections.ConfigDict, shapes: StepShapes,
                 gumbel_rng: jax.Array | None = None) -> StepDraws:
  """Span mask, masked positions, negatives (and with `gumbel_rng` the quantizer noise) for a batch.

  sample_lengths: int [batch], real samples per row. Drawn for the whole batch.
  """
  mask_rng, neg_rng = jax.random.split(rng)
  masks = draw_masks(mask_rng, sample_lengths, model, objective, shapes)
  negative_indices = negatives.sample_negatives(
      neg_rng, jnp.sum(masks.valid, axis=-1), shapes.max_masked, objective.num_negatives)
  noise = None
  if gumbel_rng is not None:
    noise = jax.random.gumbel(gumbel_rng, masks.masked_indices.shape + (
        model.num_codevector_groups, model.num_codevectors_per_group), jnp.float32)
  return StepDraws(mask_time=masks.mask_time, masked_indices=masks.masked_indices,
                   valid=masks.valid, negative_indices=negative_indices,
                   frame_lengths=masks.frame_lengths, gumbel_noise=noise)


def loss_sums(params: Any, model: Wav2Vec2ForPreTraining, batch: Batch, draws: StepDraws,
              rngs: dict[str, jax.Array], temperature: jax.Array, objective: ml_collections.ConfigDict,
              deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Un-normalised loss sum of one (micro-)batch and its sums and counts (losses.pretraining_sums
  and masking_sums; the contrastive part per batch shard of the mesh in effect)."""
  # The frame lengths sample_draws computed from batch["lengths"]: no padding mask to rebuild them.
  out = model.apply({"params": params}, batch["waveform"], None, draws.mask_time,
                    draws.masked_indices, frame_lengths=draws.frame_lengths,
                    temperature=temperature, deterministic=deterministic,
                    gumbel_noise=draws.gumbel_noise, rngs=rngs)
  sums = losses.pretraining_sums(
      out["context"], out["targets"], draws.negative_indices, draws.valid, out["soft_probs"],
      num_codevectors=model.config.num_codevectors,
      raw_features=out["raw_features"] if objective.feature_penalty_weight else None,
      temperature=objective.logit_temperature, diversity_weight=objective.diversity_weight,
      feature_penalty_weight=objective.feature_penalty_weight)
  return sums["loss_sum"], dict(sums, **masking_sums(draws))


# Values of a whole (micro-)batch, averaged over micro-batches; every other sum is added.
PER_BATCH = ("code_perplexity", "diversity_loss", "feature_penalty")
# The step's metrics (history.json names).
STEP_METRICS = ("loss", "contrastive_loss", "contrastive_loss_bits", "accuracy", "code_perplexity",
                "diversity_loss", "feature_penalty", "num_masked", "masked_fraction", "real_frames")


class Wav2Vec2Objective:
  """objective.name = "wav2vec2": Wav2Vec2ForPreTraining with the contrastive + diversity loss."""
  name = "wav2vec2"
  metric_names = STEP_METRICS
  # Top-level parameter trees that start fresh under train.init_from when the checkpoint lacks
  # them (wav2vec 2.0 needs its quantizer loaded, or re-initialised by train.init_exclude).
  fresh_heads: tuple[str, ...] = ()
  frozen_params: tuple[str, ...] = ()

  def __init__(self, model_config: Wav2Vec2Config, config: ml_collections.ConfigDict):
    self.model_config, self.config = model_config, config

  def make_model(self) -> Wav2Vec2ForPreTraining:
    return Wav2Vec2ForPreTraining(self.model_config)

  def draw(self, rng: jax.Array, sample_lengths: jax.Array, shapes: StepShapes,
           noise_rng: jax.Array | None = None) -> StepDraws:
    return sample_draws(rng, sample_lengths, self.model_config, self.config, shapes, noise_rng)

  def loss_sums(self, params, model, batch, draws, rngs, step, deterministic):
    return loss_sums(params, model, batch, draws, rngs, gumbel_temperature(step, self.config),
                     self.config, deterministic)

  def summarize(self, sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    metrics = summarize_sums(sums, PER_BATCH, losses.normalize)
    return {k: metrics[k] for k in STEP_METRICS}

  def step_metrics(self, step: jax.Array) -> dict[str, jax.Array]:
    return {"temperature": gumbel_temperature(step, self.config)}

  def export_params(self, params: Any) -> Any:
    return params  # quantizer and projections included (continued pretraining reads them)

  def forward_flops(self, size: flops.StepSize) -> dict[str, int]:
    return flops.forward_flops(self.model_config, size)
