"""Loaded weights put into a freshly initialised params tree: the one merge that continued
pretraining (training/init_from.py) and fine-tuning (downstream/finetune.py) share.

Trees are nested dicts of leaves (anything with a shape: numpy or jax arrays, tracers,
ShapeDtypeStructs); paths are written with "/" ("wav2vec2/encoder/layers/attention/query_kernel").
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from xlsr_jax.checkpoints.manager import check_shapes
from xlsr_jax.config_loading import ConfigError


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


def merge(fresh: dict, loaded: dict, exclude: Sequence[str] = (), where: str = "loaded params", *,
          partial: bool = False) -> tuple[dict, dict[str, int]]:
  """Fresh (unboxed) params with every leaf not matched by `exclude` taken from `loaded` (the
  excluded ones are `fresh`'s own objects; loaded leaves are returned as they are, not cast).

  exclude: regular expressions searched in each path; one that matches no parameter is a
  ConfigError (a misspelt path would silently load it). partial: `loaded` holds only some subtrees
  (a pretrained encoder, a reused head): the leaves it lacks stay fresh too, instead of being
  reported missing.

  Returns (params, counts) with counts of loaded / re-initialised arrays and parameters. Raises
  CheckpointMismatchError (a ValueError) naming every parameter that is missing (unless partial),
  not in the model, or of another shape.
  """
  fresh_flat, loaded_flat = _flat(fresh), _flat(loaded)
  patterns = [re.compile(p) for p in exclude]
  unused = [p.pattern for p in patterns if not any(p.search(k) for k in fresh_flat)]
  if unused:
    raise ConfigError(f"train.init_exclude pattern(s) {unused} match no parameter of the model; "
                      f"parameter paths look like {sorted(fresh_flat)[:3]}")
  excluded = {k for k in fresh_flat if any(p.search(k) for p in patterns)}
  if partial:
    excluded |= fresh_flat.keys() - loaded_flat.keys()
  keep = lambda flat: _nest({k: v for k, v in flat.items() if k not in excluded})
  check_shapes(keep(loaded_flat), keep(fresh_flat), where)
  out = {k: (v if k in excluded else loaded_flat[k]) for k, v in fresh_flat.items()}
  size = lambda keys: sum(int(np.prod(np.shape(fresh_flat[k]))) for k in keys)
  counts = dict(loaded_arrays=len(fresh_flat) - len(excluded), reinit_arrays=len(excluded),
                loaded_parameters=size(fresh_flat.keys() - excluded), reinit_parameters=size(excluded))
  return _nest(out), counts
