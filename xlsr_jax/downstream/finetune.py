"""Fine-tuning machinery (fairseq XLS-R recipe): tri-stage LR, Adam, frozen feature encoder,
Transformer frozen for the first N updates, time / channel masking, layerdrop; jitted and sharded
with the pretraining mesh and logical-axis rules, checkpointed by the same Orbax manager.

The step is a pure function (state, batch) -> (state, metrics); randomness comes from
fold_in(state.rng, step), split by purpose (mask, channel, dropout, layerdrop), so a resumed run
draws what an uninterrupted one would.
"""
from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from xlsr_jax.checkpoints.merge import merge
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.models.params import abstract_params, init_params, rebox, unbox
from xlsr_jax.objectives import masking
from xlsr_jax.sharding import mesh as mesh_lib
from xlsr_jax.training import run

FROZEN, ENCODER, HEAD = "frozen", "encoder", "head"


@flax.struct.dataclass
class FinetuneState:
  """What a fine-tuning step changes, as plain arrays (`_init_state` boxes them for the shardings;
  `create_state` unboxes)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def tri_stage_schedule(peak_lr: float, total_steps: int, phase_ratio=(0.1, 0.4, 0.5),
                       init_lr_scale: float = 0.01, final_lr_scale: float = 0.05) -> optax.Schedule:
  """fairseq tri_stage: linear warmup from init_lr_scale * peak, hold at peak, then exponential
  decay to final_lr_scale * peak over the last phase (and constant after)."""
  if not math.isclose(sum(phase_ratio), 1.0) or min(phase_ratio) < 0:
    raise ValueError(f"phase_ratio must be 3 non-negative fractions summing to 1, got {phase_ratio}")
  warmup = int(total_steps * phase_ratio[0])
  hold = int(total_steps * phase_ratio[1])
  decay = max(int(total_steps * phase_ratio[2]), 1)
  init_lr, final_lr = init_lr_scale * peak_lr, final_lr_scale * peak_lr
  decay_factor = -math.log(final_lr_scale) / decay

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = init_lr + (peak_lr - init_lr) * step / max(warmup, 1)
    decayed = peak_lr * jnp.exp(-decay_factor * (step - warmup - hold))
    lr = jnp.where(step < warmup, warm, jnp.where(step < warmup + hold, peak_lr, decayed))
    return jnp.where(step >= warmup + hold + decay, final_lr, lr)
  return schedule


def param_labels(params: Any, *, freeze_feature_encoder: bool, freeze_encoder: bool) -> Any:
  """"frozen" / "encoder" / "head" per parameter (same tree structure, boxes kept)."""
  def label(path, _):
    keys = [getattr(k, "key", None) for k in path]
    if keys[0] != "wav2vec2":
      return HEAD
    if freeze_encoder or (freeze_feature_encoder and "feature_extractor" in keys):
      return FROZEN
    return ENCODER
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int, labels: Any, *,
                   hold_encoder: bool = False) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(b1, b2, eps) [+ decoupled weight decay, + clipping] on the tri-stage schedule for the
  "encoder" and "head" parameters; "frozen" ones never change. With `hold_encoder` the "encoder"
  parameters and their Adam state stay as they are (the same state layout: the optimizer of the
  first freeze_transformer_steps updates)."""
  schedule = tri_stage_schedule(opt.peak_lr, total_steps, tuple(opt.phase_ratio),
                                opt.init_lr_scale, opt.final_lr_scale)
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay))
  trainable = optax.chain(*parts)
  encoder = hold(trainable) if hold_encoder else trainable
  return optax.multi_transform({ENCODER: encoder, HEAD: trainable, FROZEN: optax.set_to_zero()},
                               labels), schedule


def hold(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner`'s state layout without its update: zero updates, the state (moments, step count)
  returned unchanged, and no optimizer arithmetic at all."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.zeros_like, updates), state
  return optax.GradientTransformation(inner.init, update)


def update(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any, *,
           held: optax.GradientTransformation | None = None, frozen: jax.Array | None = None
           ) -> tuple[Any, Any]:
  """(new params, new optimizer state). With `held` (the same optimizer, encoder held: see
  `make_optimizer`) one of the two runs, chosen by the bool scalar `frozen` (lax.cond), instead of
  updating everything and selecting the old values back leaf by leaf."""
  if held is None:
    updates, opt_state = optimizer.update(grads, opt_state, params)
  else:
    updates, opt_state = jax.lax.cond(frozen, held.update, optimizer.update, grads, opt_state,
                                      params)
  return optax.apply_updates(params, updates), opt_state


def sample_masks(rng: jax.Array, padding_mask: jax.Array, model_config, num_frames: int,
                 fcfg: ml_collections.ConfigDict) -> dict[str, jax.Array | None]:
  """Fine-tuning time mask bool [batch, frames] and channel mask bool [batch, hidden] (or None)."""
  time_key, channel_key = jax.random.split(rng)
  out = {"mask_time": None, "channel_mask": None}
  if fcfg.mask_prob > 0:
    lengths = frame_lengths(jnp.sum(~padding_mask, axis=-1), model_config)
    out["mask_time"] = masking.compute_span_mask(
        time_key, lengths, num_frames, mask_prob=fcfg.mask_prob, mask_length=fcfg.mask_length,
        min_masks=fcfg.mask_min_masks, require_same_masks=False)
  if fcfg.mask_channel_prob > 0:
    out["channel_mask"] = masking.compute_channel_mask(
        channel_key, padding_mask.shape[0], model_config.hidden_size,
        mask_prob=fcfg.mask_channel_prob, mask_length=fcfg.mask_channel_length)
  return out


class Finetuner:
  """Jitted, sharded init / train / eval for one downstream model on one mesh; a `fit.StepOwner`,
  trained by `training.fit`.

  `model` is the model `task` (a tasks.Task) built; the task gives the loss, the forward's extra
  inputs and the eval step (a speech-translation one decodes). `create_state` takes a partial
  unboxed params tree whose subtrees replace the fresh initialisation (the pretrained encoder,
  and a head when one is reused).
  """

  def __init__(self, model: nn.Module, task, config: ml_collections.ConfigDict, mesh: Mesh,
               num_samples: int, batch_size: int):
    self.model, self.task, self.config, self.mesh = model, task, config, mesh
    self.rules = mesh_lib.rules_from_config(config.sharding.logical_axis_rules)
    self.num_samples, self.batch_size = num_samples, batch_size
    self.encoder_config = getattr(model.config, "encoder", model.config)
    self.num_frames = frame_lengths(num_samples, self.encoder_config)
    f = config.finetune
    probe = f.mode == "probe"
    self.freeze_transformer_steps = 0 if probe else f.freeze_transformer_steps
    self._labels_fn = lambda params: param_labels(
        params, freeze_feature_encoder=f.freeze_feature_encoder, freeze_encoder=probe)
    with jax.set_mesh(mesh), nn.logical_axis_rules(self.rules):
      self.abstract_params = abstract_params(model, num_samples)
    # Labels from the params of each call: boxed at `_init_state` (for the shardings), plain after.
    self.optimizer, self.schedule = make_optimizer(config.optimizer, f.num_steps, self._labels_fn)
    self.frozen_optimizer, _ = make_optimizer(config.optimizer, f.num_steps, self._labels_fn,
                                              hold_encoder=True)
    self.abstract_state, self.state_sharding = run.abstract_state(
        lambda: self._init_state({}), mesh, self.rules)
    self.batch_sharding = mesh_lib.batch_sharding(mesh, self.rules)
    self.batch_spec = self.batch_sharding.spec  # how a global batch's rows split (fit.StepOwner)
    # (state, batch) -> (state, metrics), and (state, batch) -> outputs: jitted, called under mesh.
    self.step = run.jit_train_step(self._train_step, mesh, self.state_sharding,
                                   self.batch_sharding)
    self.evaluate = run.jit_eval_step(self._eval_step, mesh, self.state_sharding,
                                      self.batch_sharding)

  def _init_state(self, loaded: Any) -> FinetuneState:
    """A fresh initialisation (key config.init_seed) with every subtree of `loaded` (a partial
    unboxed params tree: the pretrained encoder, a reused head) put in its place."""
    fresh = unbox(init_params(self.model, jax.random.key(self.config.init_seed), self.num_samples))
    merged, _ = merge(fresh, loaded, where="the loaded params", partial=True)
    params = rebox(self.abstract_params,  # dtypes follow the model's
                   jax.tree.map(lambda f, v: jnp.asarray(v, f.dtype), fresh, merged))
    return FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=self.optimizer.init(params),
                         rng=jax.random.key(self.config.train.seed))

  def create_state(self, loaded: Any) -> FinetuneState:
    """The initial state on the mesh: see `_init_state`; `loaded` may be {} (all random)."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return run.jit_init(self._init_state, self.mesh, self.state_sharding)(
          jax.tree.map(jnp.asarray, loaded))

  def forward(self, params, batch, rng, deterministic):
    """The model's outputs on a batch (time / channel masks, dropout and layerdrop drawn from
    `rng` unless deterministic)."""
    with nn.logical_axis_rules(self.rules):
      kwargs = {}
      rngs = {}
      if not deterministic:
        mask_key, dropout_key, layerdrop_key = jax.random.split(rng, 3)
        kwargs = sample_masks(mask_key, batch["padding_mask"], self.encoder_config,
                              self.num_frames, self.config.finetune)
        rngs = {"dropout": dropout_key, "layerdrop": layerdrop_key}
      kwargs.update(self.task.forward_inputs(self.model, batch))
      return self.model.apply({"params": params}, batch["waveform"], batch["padding_mask"],
                              deterministic=deterministic, rngs=rngs, **kwargs)

  def _train_step(self, state: FinetuneState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      out = self.forward(params, batch, rng, deterministic=False)
      return self.task.loss(out, batch, self.config)

    (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # fairseq freeze_finetune_updates: the Transformer (and projection) stay fixed, with their
    # optimizer moments, for the first N updates; only the head trains.
    frozen = state.step < self.freeze_transformer_steps
    new_params, new_opt = update(
        self.optimizer, grads, state.opt_state, state.params, frozen=frozen,
        held=self.frozen_optimizer if self.freeze_transformer_steps else None)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": self.schedule(state.step),
               "transformer_frozen": frozen.astype(jnp.float32), **extra}
    return state.replace(step=state.step + 1, params=new_params, opt_state=new_opt), metrics

  def _eval_step(self, state: FinetuneState, batch: dict) -> dict:
    return self.task.eval_step(self, state, batch)
