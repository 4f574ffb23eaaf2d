"""The jitted pretraining step: masks and negatives, micro-batched forward/backward, AdamW update.

Pure function of (state, batch) -> (state, metrics). Randomness comes from `state.rng` folded with
the step, split by purpose (mask, negatives, gumbel, dropout, layerdrop), so a resumed run draws
exactly what an uninterrupted one would. A step whose loss or gradient is not finite is skipped
(parameters and optimizer state unchanged) and counted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from xlsr_jax.models import Wav2Vec2ForPreTraining
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.objectives import losses, masking, negatives

# waveform float32 [batch, samples] (zero after each row's end), lengths int32 [batch] (real samples).
# The crop (samples) is whatever the batch has: each duration bucket's shape compiles once.
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; params and opt_state are boxed with logical axis names."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; per-step keys are fold_in(rng, step)
  consecutive_nonfinite: jax.Array
  total_nonfinite: jax.Array


def gumbel_temperature(step: jax.Array, objective: ml_collections.ConfigDict) -> jax.Array:
  """tau = max(start * decay^step, end)."""
  tau = objective.gumbel_start * jnp.power(objective.gumbel_decay, step.astype(jnp.float32))
  return jnp.maximum(tau, objective.gumbel_end)


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
class StepDraws:
  """What a step draws before its forward pass, from the step's keys, with static shapes.

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

  sample_lengths: int [batch], real samples per row. Drawn for the whole batch, so k micro-batches
  see exactly what one batch would.
  """
  mask_rng, neg_rng = jax.random.split(rng)
  lengths = frame_lengths(sample_lengths, model)
  mask_time = masking.compute_span_mask(
      mask_rng, lengths, shapes.num_frames, mask_prob=objective.mask_prob,
      mask_length=objective.mask_length, min_masks=objective.min_masks,
      require_same_masks=objective.require_same_masks)
  indices, valid = masking.masked_positions(mask_time, shapes.max_masked)
  negative_indices = negatives.sample_negatives(
      neg_rng, jnp.sum(valid, axis=-1), shapes.max_masked, objective.num_negatives)
  noise = None
  if gumbel_rng is not None:
    noise = jax.random.gumbel(gumbel_rng, indices.shape + (model.num_codevector_groups,
                                                           model.num_codevectors_per_group),
                              jnp.float32)
  return StepDraws(mask_time=mask_time, masked_indices=indices, valid=valid,
                   negative_indices=negative_indices,
                   frame_lengths=jnp.minimum(lengths, shapes.num_frames), gumbel_noise=noise)


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


def masking_sums(draws: StepDraws) -> dict[str, jax.Array]:
  """What the mask covers: sum over rows of each row's masked share of its real frames, the rows
  that have real frames, and the real frames (for masked_fraction and real-frame throughput)."""
  lengths = draws.frame_lengths
  has_frames = lengths > 0
  share = jnp.sum(draws.mask_time, axis=-1) / jnp.maximum(lengths, 1)
  return dict(masked_share_sum=jnp.sum(jnp.where(has_frames, share, 0.0)),
              rows_with_frames=jnp.sum(has_frames).astype(jnp.float32),
              real_frames=jnp.sum(lengths).astype(jnp.float32))


def _split_micro(tree: Any, num_micro: int) -> Any:
  """[batch, ...] -> [num_micro, batch / num_micro, ...] for every array."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch of {x.shape[0]} is not divisible by grad_accum_steps={num_micro}")
    return x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:])
  return jax.tree.map(split, tree)


def make_train_step(model: Wav2Vec2ForPreTraining, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict,
                    rules: tuple = ()
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The train step for jit: masks for the whole batch, k micro-batches summed, one update."""
  objective, num_micro = config.objective, config.train.grad_accum_steps
  max_nonfinite = config.train.max_nonfinite_steps

  def step_fn(state: TrainState, batch: Batch):
    shapes = StepShapes.create(model.config, objective, batch["waveform"].shape[1])
    with nn.logical_axis_rules(rules):
      key = jax.random.fold_in(state.rng, state.step)
      mask_key, gumbel_key, dropout_key, layerdrop_key = jax.random.split(key, 4)
      draws = sample_draws(mask_key, batch["lengths"], model.config, objective, shapes, gumbel_key)
      temperature = gumbel_temperature(state.step, objective)
      micro = _split_micro((batch, draws), num_micro)
      micro_keys = jax.vmap(lambda k: jax.random.split(k, num_micro))(
          jnp.stack([dropout_key, layerdrop_key]))  # [2, num_micro]

      def one_micro(grad_acc, xs):
        (micro_batch, micro_draws), keys = xs
        rngs = {"dropout": keys[0], "layerdrop": keys[1]}
        grad_fn = jax.grad(loss_sums, has_aux=True)
        grads, sums = grad_fn(state.params, model, micro_batch, micro_draws, rngs, temperature,
                              objective, False)
        return (grads if grad_acc is None else jax.tree.map(jnp.add, grad_acc, grads)), sums

      xs = (micro, jnp.swapaxes(micro_keys, 0, 1))
      if num_micro == 1:
        # No loop for one micro-batch: XLA:CPU ran the same forward/backward about 4x slower as a
        # length-1 scan body than inline (tiny preset, 8 x 3 s: 3.3 s vs 0.8 s per step).
        grads, sums = one_micro(None, jax.tree.map(lambda x: x[0], xs))
        sums = jax.tree.map(lambda x: x[None], sums)
      else:
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, sums = jax.lax.scan(one_micro, zeros, xs)
      metrics = summarize(sums)
      # The gradient of the per-frame loss: the same denominator as losses.normalize.
      grads = jax.tree.map(lambda g: g / jnp.maximum(metrics["num_masked"], 1.0), grads)
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

      def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      # A branch, not jnp.where(finite, new, old) over every parameter and Adam moment: the
      # select read both copies and wrote a third each step (~0.8 s of a 8 s xlsr_300m CPU step).
      new_params, new_opt_state = jax.lax.cond(
          finite, update, lambda params, opt_state, grads: (params, opt_state),
          state.params, state.opt_state, grads)
      consecutive = jnp.where(finite, 0, state.consecutive_nonfinite + 1)
      new_state = state.replace(
          step=state.step + 1, params=new_params,
          opt_state=new_opt_state, consecutive_nonfinite=consecutive,
          total_nonfinite=state.total_nonfinite + (~finite).astype(jnp.int32))
      metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step), temperature=temperature,
                     skipped_nonfinite=(~finite).astype(jnp.float32),
                     total_nonfinite=new_state.total_nonfinite.astype(jnp.float32),
                     stop_nonfinite=(consecutive >= max_nonfinite).astype(jnp.float32))
      return new_state, metrics

  return step_fn


# Values of a whole (micro-)batch, averaged over micro-batches; every other sum is added.
PER_BATCH = ("code_perplexity", "diversity_loss", "feature_penalty")
# The step's metrics (metrics.json names).
STEP_METRICS = ("loss", "contrastive_loss", "contrastive_loss_bits", "accuracy", "code_perplexity",
                "diversity_loss", "feature_penalty", "num_masked", "masked_fraction", "real_frames")


def summarize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Step metrics from micro-batch sums [num_micro]: added (PER_BATCH ones averaged), then
  divided once, by `losses.normalize` (per masked frame) and for the masked fraction."""
  total = {k: jnp.mean(v) if k in PER_BATCH else jnp.sum(v) for k, v in sums.items()}
  metrics = losses.normalize(total)
  metrics["masked_fraction"] = total["masked_share_sum"] / jnp.maximum(total["rows_with_frames"], 1.0)
  return {k: metrics[k] for k in STEP_METRICS}


def make_eval_step(model: Wav2Vec2ForPreTraining, config: ml_collections.ConfigDict,
                   rules: tuple = ()) -> Callable[[TrainState, Batch, jax.Array], dict]:
  """Validation loss with argmax quantization and no dropout; masks from `rng`."""
  objective = config.objective

  def eval_fn(state: TrainState, batch: Batch, rng: jax.Array):
    shapes = StepShapes.create(model.config, objective, batch["waveform"].shape[1])
    with nn.logical_axis_rules(rules):
      draws = sample_draws(rng, batch["lengths"], model.config, objective, shapes)
      _, sums = loss_sums(state.params, model, batch, draws, {}, gumbel_temperature(state.step, objective),
                          objective, True)
      return summarize(jax.tree.map(lambda x: x[None], sums))

  return eval_fn
