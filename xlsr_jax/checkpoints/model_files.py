"""Standalone model files: our Orbax params + model_config.json, and the Hugging Face directory layout.

`save_model/load_model` write and read what downstream evaluation loads (no optimizer state);
`save_hf/load_hf` write and read `config.json` + `model.safetensors` (or `pytorch_model.bin`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.checkpoints import hf_layout
from xlsr_jax.models.config import Wav2Vec2Config

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def read_json(path: str) -> Any:
  """The JSON value of the file `path`; a file that is not JSON raises ConversionError naming it."""
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise hf_layout.ConversionError(f"{path}: not valid JSON ({e})") from e


def config_to_dict(config: Wav2Vec2Config) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if f.name in ("dtype", "param_dtype"):
      value = jnp.dtype(value).name
    elif isinstance(value, tuple):
      value = list(value)
    out[f.name] = value
  return out


def config_from_dict(values: dict[str, Any]) -> Wav2Vec2Config:
  """What `config_to_dict` wrote, back as a Wav2Vec2Config (unknown fields are a ValueError)."""
  from xlsr_jax.models.config import UnknownFieldError, with_fields
  try:
    return with_fields(Wav2Vec2Config(), values)
  except UnknownFieldError as e:
    fields = sorted(f.name for f in dataclasses.fields(Wav2Vec2Config))
    raise ValueError(f"unknown model config field(s) {e.unknown}; valid fields: {fields}") from None


def is_training_workdir(directory: str) -> bool:
  """A pretraining or evaluation workdir: config.json of the run beside checkpoints/."""
  return (os.path.isdir(os.path.join(directory, "checkpoints"))
          and os.path.exists(os.path.join(directory, "config.json")))


def save_model(directory: str, params: dict, config: Wav2Vec2Config,
               metadata: dict[str, Any] | None = None) -> None:
  """Writes params (Orbax, any pytree of arrays) and the model config (JSON) under `directory`."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, PARAMS_DIR), params, force=True)
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump({"model": config_to_dict(config), "metadata": metadata or {}}, f, indent=2)


def load_model(directory: str) -> tuple[dict, Wav2Vec2Config, dict[str, Any]]:
  """Reads what `save_model` wrote: (params as numpy-backed arrays, config, metadata)."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(config_path):
    if is_training_workdir(directory):
      raise FileNotFoundError(f"{directory} is a training workdir, not an exported model; export it "
                              f"first: python -m xlsr_jax.export --workdir={directory} --out=OUT")
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; not a model written by "
                            f"xlsr_jax.export or xlsr_jax.convert")
  stored = read_json(config_path)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(directory, PARAMS_DIR))
  return params, config_from_dict(stored["model"]), stored.get("metadata", {})


def save_hf(directory: str, params: dict, config: Wav2Vec2Config) -> None:
  """Writes `config.json` + `model.safetensors` in the HF wav2vec2 layout."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  state = hf_layout.ours_to_hf(jax.tree.map(np.asarray, params), config)
  architecture = "Wav2Vec2ForPreTraining" if "wav2vec2" in params else "Wav2Vec2Model"
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_layout.config_to_hf(config, architectures=[architecture]), f, indent=2)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def read_hf_state_dict(path: str) -> dict[str, np.ndarray]:
  """A HF weights file (safetensors or a PyTorch .bin state dict) or a directory holding one."""
  if os.path.isdir(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.exists(os.path.join(path, name)):
        return read_hf_state_dict(os.path.join(path, name))
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (expected model.safetensors or pytorch_model.bin)")
  try:
    if path.endswith(".safetensors"):
      from safetensors.numpy import load_file
      return load_file(path)
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: hf_layout._to_numpy(v) for k, v in state.items()}
  except Exception as e:  # pylint: disable=broad-except  # safetensors, torch and pickle raise many kinds
    first = str(e).splitlines()[0][:200] if str(e) else ""
    raise hf_layout.ConversionError(
        f"{path} ({os.path.getsize(path):,} bytes): not a readable Hugging Face weights file; "
        f"expected {'safetensors' if path.endswith('.safetensors') else 'a PyTorch state dict'} "
        f"(truncated or another format? {type(e).__name__}: {first})") from e


def load_hf(path: str, config: Wav2Vec2Config | None = None, *, ignore_extra: tuple[str, ...] = ()):
  """A HF wav2vec2 directory (or weights file + `config`) -> (our params, config)."""
  if config is None:
    config_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
    if not os.path.exists(config_path):
      raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face wav2vec2 directory "
                              f"(config.json + model.safetensors or pytorch_model.bin)")
    hf_config = read_json(config_path)
    config = hf_layout.config_from_hf(hf_config)
  state = read_hf_state_dict(path)
  return hf_layout.hf_to_ours(state, config, ignore_extra=ignore_extra), config
