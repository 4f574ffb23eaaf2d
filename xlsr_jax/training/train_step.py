"""The jitted pretraining step of any objective (objectives.Objective): its draws, micro-batched
forward/backward, AdamW update.

Pure function of (state, batch) -> (state, metrics). Randomness comes from `state.rng` folded with
the step, split by purpose (mask, sampling noise, dropout, layerdrop), so a resumed run draws
exactly what an uninterrupted one would. A step whose loss or gradient is not finite is skipped
(parameters and Adam moments unchanged) and counted; the learning-rate schedule still advances
with the step, so the rate applied after k skips is the logged schedule(step).
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from xlsr_jax.objectives.base import Batch, Objective, StepShapes  # noqa: F401  (StepShapes: callers)

# The crop (samples) is whatever the batch has: each duration bucket's shape compiles once.


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as plain arrays (the logical axis names were read once, for the
  shardings)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; per-step keys are fold_in(rng, step)
  consecutive_nonfinite: jax.Array
  total_nonfinite: jax.Array


def _split_micro(tree: Any, num_micro: int) -> Any:
  """[batch, ...] -> [num_micro, batch / num_micro, ...] for every array."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch of {x.shape[0]} is not divisible by grad_accum_steps={num_micro}")
    return x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:])
  return jax.tree.map(split, tree)


def make_train_step(model: nn.Module, objective: Objective, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict,
                    rules: tuple = ()
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The train step for jit: the objective's draws for the whole batch, k micro-batches summed,
  one update."""
  num_micro = config.train.grad_accum_steps
  max_nonfinite = config.train.max_nonfinite_steps

  def step_fn(state: TrainState, batch: Batch):
    shapes = StepShapes.create(objective.model_config, objective.config, batch["waveform"].shape[1])
    with nn.logical_axis_rules(rules):
      key = jax.random.fold_in(state.rng, state.step)
      mask_key, noise_key, dropout_key, layerdrop_key = jax.random.split(key, 4)
      draws = objective.draw(mask_key, batch["lengths"], shapes, noise_key)
      micro = _split_micro((batch, draws), num_micro)
      micro_keys = jax.vmap(lambda k: jax.random.split(k, num_micro))(
          jnp.stack([dropout_key, layerdrop_key]))  # [2, num_micro]

      def one_micro(grad_acc, xs):
        (micro_batch, micro_draws), keys = xs
        rngs = {"dropout": keys[0], "layerdrop": keys[1]}
        grad_fn = jax.grad(objective.loss_sums, has_aux=True)
        grads, sums = grad_fn(state.params, model, micro_batch, micro_draws, rngs, state.step, False)
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
      metrics = objective.summarize(sums)
      # The gradient of the per-frame loss: the same denominator as the objective's normalize.
      grads = jax.tree.map(lambda g: g / jnp.maximum(metrics["num_masked"], 1.0), grads)
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

      def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      def skip(params, opt_state, grads):
        del grads  # nothing applied; the schedule's count still moves with the step
        return params, advance_schedule(opt_state, state.step + 1)

      # A branch, not jnp.where(finite, new, old) over every parameter and Adam moment: the
      # select read both copies and wrote a third each step (~0.8 s of a 8 s xlsr_300m CPU step).
      new_params, new_opt_state = jax.lax.cond(
          finite, update, skip, state.params, state.opt_state, grads)
      consecutive = jnp.where(finite, 0, state.consecutive_nonfinite + 1)
      new_state = state.replace(
          step=state.step + 1, params=new_params,
          opt_state=new_opt_state, consecutive_nonfinite=consecutive,
          total_nonfinite=state.total_nonfinite + (~finite).astype(jnp.int32))
      metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                     skipped_nonfinite=(~finite).astype(jnp.float32),
                     total_nonfinite=new_state.total_nonfinite.astype(jnp.float32),
                     stop_nonfinite=(consecutive >= max_nonfinite).astype(jnp.float32),
                     **objective.step_metrics(state.step))
      return new_state, metrics

  return step_fn


def advance_schedule(opt_state: Any, count: jax.Array) -> Any:
  """opt_state with every learning-rate schedule's step count set to `count` (Adam's moments and
  its bias-correction count untouched): a skipped step leaves the schedule where the step is."""
  def set_count(node):
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=jnp.asarray(count, node.count.dtype))
    return node
  return jax.tree.map(set_count, opt_state,
                      is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState))


def make_eval_step(model: nn.Module, objective: Objective, rules: tuple = ()
                   ) -> Callable[[TrainState, Batch, jax.Array], dict]:
  """Validation metrics with no dropout and no sampling noise (argmax codes); masks from `rng`."""

  def eval_fn(state: TrainState, batch: Batch, rng: jax.Array):
    shapes = StepShapes.create(objective.model_config, objective.config, batch["waveform"].shape[1])
    with nn.logical_axis_rules(rules):
      draws = objective.draw(rng, batch["lengths"], shapes)
      _, sums = objective.loss_sums(state.params, model, batch, draws, {}, state.step, True)
      return objective.summarize(jax.tree.map(lambda x: x[None], sums))

  return eval_fn
