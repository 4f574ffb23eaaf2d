"""Continued pretraining: the first state of a run from released or exported weights (train.init_from).

`initial_state` is called only when the workdir has no checkpoint (a resumed run always restores its
own checkpoints). It loads any checkpoint `checkpoints.sources` reads (an xlsr_jax export, a Hugging
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
import re

import jax
import ml_collections
import numpy as np

from xlsr_jax.checkpoints import sources
from xlsr_jax.checkpoints.manager import check_shapes, rebox, unbox
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.training import train_step as ts

DOWNSTREAM_HEADS = ("lm_head", "head")  # fine-tuning heads: not part of the pretraining model
# Fields that change what the network computes without changing any parameter's shape.
ARCHITECTURE_FIELDS = ("do_stable_layer_norm", "feat_extract_norm", "conv_stride", "conv_kernel")


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    out.update(_flat(v, path) if isinstance(v, dict) else {path: v})
  return out


def _nest(flat: dict[str, object]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


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


def merge(fresh: dict, loaded: dict, exclude: list[str], where: str) -> tuple[dict, dict[str, int]]:
  """Fresh (unboxed) params with every leaf not matched by `exclude` taken from `loaded` (leaves:
  anything with a shape; the excluded ones are `fresh`'s own objects).

  Returns (params, counts) with counts of loaded / re-initialised arrays and parameters. Raises
  CheckpointMismatchError naming every non-excluded parameter missing or of another shape, and
  ConfigError for a pattern that matches no parameter (a misspelt path would silently load it).
  """
  fresh_flat, loaded_flat = _flat(fresh), _flat(loaded)
  patterns = [re.compile(p) for p in exclude]
  unused = [p.pattern for p in patterns if not any(p.search(k) for k in fresh_flat)]
  if unused:
    raise ConfigError(f"train.init_exclude pattern(s) {unused} match no parameter of the model; "
                      f"parameter paths look like {sorted(fresh_flat)[:3]}")
  excluded = {k for k in fresh_flat if any(p.search(k) for p in patterns)}
  keep = lambda flat: _nest({k: v for k, v in flat.items() if k not in excluded})
  check_shapes(keep(loaded_flat), keep(fresh_flat), where)
  out = {k: (v if k in excluded else loaded_flat[k]) for k, v in fresh_flat.items()}
  size = lambda keys: sum(int(np.prod(np.shape(fresh_flat[k]))) for k in keys)
  counts = dict(loaded_arrays=len(fresh_flat) - len(excluded), reinit_arrays=len(excluded),
                loaded_parameters=size(fresh_flat.keys() - excluded), reinit_parameters=size(excluded))
  return _nest(out), counts


def load_checked(path: str, abstract_params: dict, model_config: Wav2Vec2Config,
                 exclude: list[str]) -> tuple[dict, dict]:
  """(values, counts): the checkpoint at `path` checked against the model's unboxed abstract params,
  before any device memory is used. `values` has the params' structure: the checkpoint's numpy
  array, or for an excluded parameter its `abstract_params` leaf itself (see `merge`)."""
  where = f"train.init_from={path}"
  try:
    loaded = sources.load_checkpoint(path)
  except (sources.InitError, ValueError) as e:  # ConversionError, CheckpointFileError, unsafe pickle
    raise ConfigError(f"{where}: {e}") from e
  check_architecture(loaded.config, model_config, where)
  tree, dropped = pretraining_tree(loaded.params)
  values, counts = merge(abstract_params, tree, exclude, where)
  counts.update(source=loaded.source, dropped_heads=dropped)
  return values, counts


def place(values: dict, abstract_params: dict, state: ts.TrainState, shardings: ts.TrainState
          ) -> ts.TrainState:
  """`state` (fresh, boxed) with every loaded value of `values` cast to the parameter's dtype and
  placed with its sharding (`shardings`: `Trainer.state_sharding`); excluded ones stay fresh."""
  def put(value, abstract, fresh, sharding):
    if value is abstract:
      return fresh
    host = np.asarray(value, fresh.dtype)  # bf16 / fp16 checkpoints cast to the param dtype
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  placed = jax.tree.map(put, values, abstract_params, unbox(state.params), unbox(shardings.params))
  return state.replace(params=rebox(state.params, placed))


def initial_state(trainer, config: ml_collections.ConfigDict) -> ts.TrainState:
  """The state a new run starts from: fresh, or train.init_from's weights with a fresh optimizer."""
  path = config.train.init_from
  if not path:
    logging.info("initialised a new state")
    return trainer.create_state()
  abstract = unbox(trainer.abstract_state.params)
  values, counts = load_checked(path, abstract, trainer.model.config, list(config.train.init_exclude))
  state = place(values, abstract, trainer.create_state(), trainer.state_sharding)
  heads = f"; left out the downstream head(s) {counts['dropped_heads']}" if counts["dropped_heads"] else ""
  print(f"init_from {path} ({counts['source']}): loaded {counts['loaded_arrays']} arrays "
        f"({counts['loaded_parameters']:,} parameters), re-initialised {counts['reinit_arrays']} arrays "
        f"({counts['reinit_parameters']:,} parameters) matching train.init_exclude="
        f"{list(config.train.init_exclude)}{heads}; optimizer and schedule start at step 0", flush=True)
  return state
