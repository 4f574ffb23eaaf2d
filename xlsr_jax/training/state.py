"""Creating the train state, its shardings from the logical-axis rules, and the jitted functions."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xlsr_jax.models import Wav2Vec2ForPreTraining
from xlsr_jax.sharding import mesh as mesh_lib
from xlsr_jax.training import train_step as ts


def init_state(model: Wav2Vec2ForPreTraining, optimizer: optax.GradientTransformation,
               shapes: ts.StepShapes, seed: int) -> ts.TrainState:
  """Fresh parameters (boxed with logical names) and optimizer state; pure, for jit/eval_shape."""
  param_key, rng = jax.random.split(jax.random.key(seed))
  batch, frames = 1, shapes.num_frames
  params = model.init({"params": param_key}, jnp.zeros((batch, shapes.num_samples), jnp.float32),
                      None, jnp.zeros((batch, frames), bool),
                      jnp.zeros((batch, shapes.max_masked), jnp.int32))["params"]
  zero = jnp.zeros((), jnp.int32)
  return ts.TrainState(step=zero, params=params, opt_state=optimizer.init(params), rng=rng,
                       consecutive_nonfinite=zero, total_nonfinite=zero)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: tuple) -> Any:
  """NamedShardings for every leaf of a (boxed) abstract state, following the logical rules."""
  specs = nn.get_partition_spec(abstract_state)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_shardings(mesh: Mesh, rules: tuple) -> dict[str, NamedSharding]:
  sharding = mesh_lib.batch_sharding(mesh, rules)
  return {"waveform": sharding, "lengths": sharding}


class Trainer:
  """Holds the jitted init / train / eval functions for one config on one mesh."""

  def __init__(self, model: Wav2Vec2ForPreTraining, config: ml_collections.ConfigDict, mesh: Mesh,
               rules: tuple, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               shapes: ts.StepShapes):
    self.model, self.config, self.mesh, self.rules, self.shapes = model, config, mesh, rules, shapes
    seed = config.train.seed
    init_fn = lambda: init_state(model, optimizer, shapes, seed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      self.abstract_state = jax.eval_shape(init_fn)
    self.state_sharding = state_shardings(self.abstract_state, mesh, rules)
    self.batch_sharding = batch_shardings(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    self.init = jax.jit(init_fn, out_shardings=self.state_sharding)
    step_fn = ts.make_train_step(model, optimizer, schedule, config, rules)
    self.train_step = jax.jit(step_fn, in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    eval_fn = ts.make_eval_step(model, config, rules)
    self.eval_step = jax.jit(eval_fn, in_shardings=(self.state_sharding, self.batch_sharding, replicated),
                             out_shardings=replicated)

  def create_state(self) -> ts.TrainState:
    with jax.set_mesh(self.mesh):
      return self.init()

  def step(self, state: ts.TrainState, batch: dict) -> tuple[ts.TrainState, dict]:
    with jax.set_mesh(self.mesh):
      return self.train_step(state, batch)

  def evaluate(self, state: ts.TrainState, batch: dict, rng: jax.Array) -> dict:
    with jax.set_mesh(self.mesh):
      return self.eval_step(state, batch, rng)


def build_trainer(config: ml_collections.ConfigDict, mesh: Mesh, num_samples: int) -> Trainer:
  """Model, optimizer, shapes and rules from a validated config."""
  from xlsr_jax.config_loading import model_config_from
  from xlsr_jax.training.optimizer import make_optimizer
  model_cfg = model_config_from(config)
  model = Wav2Vec2ForPreTraining(model_cfg)
  optimizer, schedule = make_optimizer(config.optimizer, config.train.num_steps)
  shapes = ts.StepShapes.create(model_cfg, config.objective, num_samples)
  rules = mesh_lib.rules_from_config(config.sharding.logical_axis_rules)
  return Trainer(model, config, mesh, rules, optimizer, schedule, shapes)
