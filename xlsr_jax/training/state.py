"""Creating the train state, its shardings from the logical-axis rules, and the jitted functions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

import flax.linen as nn

from xlsr_jax.models.params import init_params
from xlsr_jax.objectives import Objective, make_objective
from xlsr_jax.sharding import mesh as mesh_lib
from xlsr_jax.training import run
from xlsr_jax.training import train_step as ts
from xlsr_jax.training.run import state_shardings  # noqa: F401  (plan.py reads it here)


def init_state(model: nn.Module, optimizer: optax.GradientTransformation,
               shapes: ts.StepShapes, seed: int) -> ts.TrainState:
  """Fresh parameters and optimizer state, boxed with logical names (`run.abstract_state` reads the
  shardings from them, `run.jit_init` unboxes); pure, for jit/eval_shape."""
  param_key, rng = jax.random.split(jax.random.key(seed))
  params = init_params(model, param_key, shapes.num_samples)
  zero = jnp.zeros((), jnp.int32)
  return ts.TrainState(step=zero, params=params, opt_state=optimizer.init(params), rng=rng,
                       consecutive_nonfinite=zero, total_nonfinite=zero)


def batch_shardings(mesh: Mesh, rules: tuple) -> dict[str, NamedSharding]:
  sharding = mesh_lib.batch_sharding(mesh, rules)
  return {"waveform": sharding, "lengths": sharding}


class Trainer:
  """Holds the jitted init / train / eval functions for one config on one mesh (`training.run`);
  a `fit.StepOwner`, trained by `training.fit`."""

  def __init__(self, objective: Objective, config: ml_collections.ConfigDict, mesh: Mesh,
               rules: tuple, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               shapes: ts.StepShapes):
    model = objective.make_model()
    self.model, self.objective = model, objective
    self.config, self.mesh, self.rules, self.shapes = config, mesh, rules, shapes
    seed = config.train.seed
    init_fn = lambda: init_state(model, optimizer, shapes, seed)
    self.abstract_state, self.state_sharding = run.abstract_state(init_fn, mesh, rules)
    self.batch_sharding = batch_shardings(mesh, rules)
    self.batch_spec = self.batch_sharding["waveform"].spec  # how a global batch's rows split
    self.create_state = run.jit_init(init_fn, mesh, self.state_sharding)
    self.step = run.jit_train_step(
        ts.make_train_step(model, objective, optimizer, schedule, config, rules),
        mesh, self.state_sharding, self.batch_sharding)
    self.evaluate = run.jit_eval_step(ts.make_eval_step(model, objective, rules), mesh,
                                      self.state_sharding, self.batch_sharding, 1)
    # The jax.jit objects (for .lower and the compile cache).
    self.init, self.train_step, self.eval_step = (self.create_state.jitted, self.step.jitted,
                                                  self.evaluate.jitted)


def build_trainer(config: ml_collections.ConfigDict, mesh: Mesh, num_samples: int) -> Trainer:
  """Objective (and its model), optimizer, shapes and rules from a validated config."""
  from xlsr_jax.config_loading import model_config_from
  from xlsr_jax.training.optimizer import make_optimizer
  model_cfg = model_config_from(config)
  objective = make_objective(model_cfg, config.objective)
  optimizer, schedule = make_optimizer(config.optimizer, config.train.num_steps,
                                       frozen=objective.frozen_params)
  shapes = ts.StepShapes.create(model_cfg, config.objective, num_samples)
  rules = mesh_lib.rules_from_config(config.sharding.logical_axis_rules)
  return Trainer(objective, config, mesh, rules, optimizer, schedule, shapes)
