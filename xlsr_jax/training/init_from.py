"""Continued pretraining: the first state of a run from released or exported weights (train.init_from).

`initial_state` is called only when the workdir has no checkpoint (a resumed run always restores its
own checkpoints). It loads any checkpoint `checkpoints.weight_sources` reads (an xlsr_jax export, a Hugging
Face Wav2Vec2ForPreTraining / Wav2Vec2Model directory, a fairseq .pt), quantizer and projections
included, into a fresh state: step 0, fresh optimizer moments and learning-rate schedule.

train.init_exclude: regular expressions searched (`re.search`) in each parameter's path written
with "/" ("quantizer/codevectors", "wav2vec2/encoder/layers/attention/query_kernel"); a matching
parameter keeps the model's own random initialisation instead of the checkpoint's value, e.g.
["^quantizer/"] re-draws the codebook, ["^quantizer/", "^project_"] starts the pretraining head over
(and lets an encoder-only or fine-tuned checkpoint be continued). Every other parameter of the model
must be in the checkpoint with the same shape (CheckpointMismatchError names each one otherwise);
a fine-tuned checkpoint's head (lm_head / head) is not part of pretraining and is left out.
"""
from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np

from xlsr_jax.checkpoints import weight_sources
from xlsr_jax.checkpoints.merge import merge
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.training import train_step as ts

DOWNSTREAM_HEADS = ("lm_head", "head")  # fine-tuning heads: not part of the pretraining model
# Fields that change what the network computes without changing any parameter's shape.
ARCHITECTURE_FIELDS = ("do_stable_layer_norm", "feat_extract_norm", "conv_stride", "conv_kernel")


def pretraining_tree(params: dict) -> tuple[dict, list[str]]:
  """A loaded tree in the `Wav2Vec2ForPreTraining` layout (encoder under "wav2vec2") and the names of
  the downstream heads left out."""
  if "wav2vec2" not in params:  # a Wav2Vec2Model tree: the encoder at the root
    return {"wav2vec2": params}, []
  dropped = [k for k in DOWNSTREAM_HEADS if k in params]
  return {k: v for k, v in params.items() if k not in DOWNSTREAM_HEADS}, dropped


def check_architecture(checkpoint: Wav2Vec2Config, model: Wav2Vec2Config, where: str) -> None:
  """ConfigError naming every ARCHITECTURE_FIELDS value that differs (same shapes, other network)."""
  diffs = [f"{f}: checkpoint {getattr(checkpoint, f)!r}, model {getattr(model, f)!r}"
           for f in ARCHITECTURE_FIELDS if getattr(checkpoint, f) != getattr(model, f)]
  if diffs:
    raise ConfigError(f"{where} is another architecture than the configured model: " + "; ".join(diffs))


def load_checked(path: str, abstract_params: dict, model_config: Wav2Vec2Config,
                 exclude: list[str], objective_heads: tuple[str, ...] = ()) -> tuple[dict, dict]:
  """(values, counts): the checkpoint at `path` checked against the model's unboxed abstract params,
  before any device memory is used. `values` has the params' structure: the checkpoint's numpy
  array, or for an excluded parameter its `abstract_params` leaf itself (see `merge`).

  objective_heads: top-level parameter trees of the objective (BEST-RQ's quantizer and heads) that
  start fresh when the checkpoint has none; the checkpoint's trees the model does not have
  (another objective's, e.g. wav2vec 2.0's quantizer under BEST-RQ) are then left out.
  """
  where = f"train.init_from={path}"
  try:
    loaded = weight_sources.load_checkpoint(path)
  except (weight_sources.InitError, ValueError) as e:  # ConversionError, CheckpointFileError, unsafe pickle
    raise ConfigError(f"{where}: {e}") from e
  check_architecture(loaded.config, model_config, where)
  tree, dropped = pretraining_tree(loaded.params)
  fresh = [k for k in objective_heads if k not in tree]
  if objective_heads:
    dropped += [k for k in tree if k not in abstract_params]
    tree = {k: v for k, v in tree.items() if k in abstract_params}
    exclude = list(exclude) + [f"^{k}/" for k in fresh]
  values, counts = merge(abstract_params, tree, exclude, where)
  counts.update(source=loaded.source, dropped_heads=dropped, fresh_heads=fresh)
  return values, counts


def place(values: dict, abstract_params: dict, state: ts.TrainState, shardings: ts.TrainState
          ) -> ts.TrainState:
  """`state` (fresh) with every loaded value of `values` cast to the parameter's dtype and
  placed with its sharding (`shardings`: `Trainer.state_sharding`); excluded ones stay fresh."""
  def put(value, abstract, fresh, sharding):
    if value is abstract:
      return fresh
    host = np.asarray(value, fresh.dtype)  # bf16 / fp16 checkpoints cast to the param dtype
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  placed = jax.tree.map(put, values, abstract_params, state.params, shardings.params)
  return state.replace(params=placed)


def initial_state(trainer, config: ml_collections.ConfigDict) -> ts.TrainState:
  """The state a new run starts from: fresh, or train.init_from's weights with a fresh optimizer."""
  path = config.train.init_from
  if not path:
    logging.info("initialised a new state")
    return trainer.create_state()
  abstract = trainer.abstract_state.params
  values, counts = load_checked(path, abstract, trainer.model.config, list(config.train.init_exclude),
                                trainer.objective.fresh_heads)
  state = place(values, abstract, trainer.create_state(), trainer.state_sharding)
  heads = f"; left out the downstream head(s) {counts['dropped_heads']}" if counts["dropped_heads"] else ""
  fresh = (f"; the {trainer.objective.name} objective's {counts['fresh_heads']} start fresh"
           if counts["fresh_heads"] else "")
  print(f"init_from {path} ({counts['source']}): loaded {counts['loaded_arrays']} arrays "
        f"({counts['loaded_parameters']:,} parameters), re-initialised {counts['reinit_arrays']} arrays "
        f"({counts['reinit_parameters']:,} parameters) matching train.init_exclude="
        f"{list(config.train.init_exclude)}{heads}{fresh}; optimizer and schedule start at step 0", flush=True)
  return state
