"""A pretraining run's checkpoint as a standalone model (no optimizer state): the library behind
`python -m xlsr_jax.export` and the training main's end-of-run export.

A run is a workdir: DIR/config.json (the run's config, `config.to_json()`) and DIR/checkpoints/
(xlsr_jax.checkpoints.manager); only the `params` item of the newest (or the given) step is read.
`orbax` writes OUT/params + OUT/model_config.json (model_files.save_model, what downstream
evaluation loads); `hf` writes the Hugging Face wav2vec2 layout (config.json + model.safetensors).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from xlsr_jax.checkpoints import manager as manager_lib
from xlsr_jax.checkpoints import model_files
from xlsr_jax.config_loading import model_config_from
from xlsr_jax.models import params as params_lib
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.objectives import Objective, make_objective

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
FORMATS = ("orbax", "hf")


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """DIR/config.json (written by the training main) as a ConfigDict; errors name the path."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: expected the run's config (config.to_json()) "
                            f"written by the training main at start-up")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def run_objective(config: ml_collections.ConfigDict, model_config: Wav2Vec2Config) -> Objective:
  """The objective a run trained with (objective.name; runs from before it existed: wav2vec2)."""
  return make_objective(model_config, config.objective)


def load_params(workdir: str, step: int | None = None) -> tuple[Any, Wav2Vec2Config, int]:
  """(params as CPU arrays, model config, step) of the run in `workdir`; newest step by default.

  The params are what the run's objective exports: all of wav2vec 2.0's pretraining model
  (quantizer included, for continued pretraining), or BEST-RQ's encoder alone (Wav2Vec2Model)."""
  config = read_run_config(workdir)
  model_config = model_config_from(config)
  objective = run_objective(config, model_config)
  directory = os.path.join(workdir, CHECKPOINTS_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  with manager_lib.CheckpointManager(directory, save_every=1, keep=1, read_only=True) as mngr:
    target = params_lib.abstract_params(objective.make_model(), boxed=False,
                                        sharding=params_lib.host_sharding())
    try:
      params, step = mngr.restore_params(target, step)
    except manager_lib.CheckpointMismatchError as e:
      raise ValueError(f"the model of {os.path.join(workdir, CONFIG_FILE)} does not match the "
                       f"checkpoint: {e}") from e
  return objective.export_params(params), model_config, step


def write(out: str, fmt: str, params: Any, model_config: Wav2Vec2Config, step: int,
          workdir: str) -> None:
  """Writes exported `params` (load_params) to `out` in `fmt`; ValueError for a layout the model
  cannot have."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt}: expected one of {FORMATS}")
  if fmt == "orbax":
    model_files.save_model(out, params, model_config, metadata={
        "exported_from": os.path.abspath(workdir), "step": step})
  elif model_config.frontend != "cnn":
    raise ValueError(f"--format=hf: the Hugging Face wav2vec2 layout has only the CNN frontend; "
                     f"this model's frontend is {model_config.frontend!r} (export --format=orbax)")
  else:
    model_files.save_hf(out, jax.tree.map(np.asarray, params), model_config)


def export(workdir: str, out: str, fmt: str = "orbax", step: int | None = None) -> int:
  """Writes the params of `workdir`'s checkpoint to `out` in `fmt`; returns the exported step."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt}: expected one of {FORMATS}")
  params, model_config, step = load_params(workdir, step)
  write(out, fmt, params, model_config, step, workdir)
  return step


_EXPORT_ERRORS = (FileNotFoundError, ValueError, manager_lib.CheckpointReadError)


def export_or_say(workdir: str, out: str, fmt: str = "orbax", step: int | None = None) -> bool:
  """`export`, printing the exported step, or why it failed (one line on stderr); True if written."""
  try:
    step = export(workdir, out, fmt, step)
  except _EXPORT_ERRORS as e:
    print(f"export failed: {e}", file=sys.stderr)
    return False
  print(f"exported step {step} of {workdir} to {out} ({fmt})")
  return True


def export_every_format(workdir: str, export_dir: str) -> list[str]:
  """Exports `workdir`'s newest checkpoint (read once) into export_dir/<format> for each format;
  returns what was written as "<dir> (<layout>)" (a format the model cannot have prints why and is
  left out)."""
  layouts = {"orbax": "xlsr_jax", "hf": "Hugging Face"}
  try:
    params, model_config, step = load_params(workdir)
  except _EXPORT_ERRORS as e:
    print(f"export failed: {e}", file=sys.stderr)
    return []
  written = []
  for fmt in FORMATS:
    out = f"{export_dir}/{fmt}"
    try:
      write(out, fmt, params, model_config, step, workdir)
    except _EXPORT_ERRORS as e:
      print(f"export failed: {e}", file=sys.stderr)
      continue
    print(f"exported step {step} of {workdir} to {out} ({fmt})")
    written.append(f"{out} ({layouts[fmt]})")
  return written
