"""Experiment configs: load `experiments/x.py:get_config()`, apply `--config.a.b=v` overrides, validate.

Every error names the bad key (its full dotted path), says what was expected and suggests the
nearest valid keys, so a misspelled override stops the run at start-up instead of being ignored.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from xlsr_jax.models.config import Wav2Vec2Config


class ConfigError(ValueError):
  """A config file, override or value that cannot be used; the message names the key."""


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a plain Python config file."""
  if not os.path.exists(path):
    raise ConfigError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"xlsr_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config()")
  return module.get_config()


def _nearest(key: str, candidates: Sequence[str]) -> str:
  close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
  shown = close or sorted(candidates)[:12]
  return f"nearest valid keys: {', '.join(shown)}" if close else f"valid keys: {', '.join(shown)}"


def _parse_value(path: str, text: str, current: Any) -> Any:
  """Parse an override string into the type of the current value; wrong types are errors."""
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{path}={text}: expected a bool (true/false), got {text!r}")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"--config.{path}={text}: expected an int, got {text!r}") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"--config.{path}={text}: expected a float, got {text!r}") from None
  if isinstance(current, str):
    return text
  if current is None or isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      if current is None:
        return text
      raise ConfigError(f"--config.{path}={text}: expected a Python literal "
                        f"{type(current).__name__}, got {text!r}") from None
    if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
      raise ConfigError(f"--config.{path}={text}: expected a {type(current).__name__}, got {text!r}")
    return tuple(value) if isinstance(current, tuple) else value
  raise ConfigError(f"--config.{path}: cannot override a value of type {type(current).__name__}")


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Set config[a][b] = parsed(text) for dotted "a.b"; unknown keys list the nearest valid ones."""
  parts = dotted.split(".")
  node = config
  for i, part in enumerate(parts):
    where = ".".join(parts[:i]) or "<top level>"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"--config.{dotted}: {where} is a value, not a section")
    if part not in node and i == 1 and parts[0] == "model":
      _add_model_field(node, part, dotted)
    if part not in node:
      raise ConfigError(f"--config.{dotted}: unknown key {part!r} in {where}; {_nearest(part, node.keys())}")
    if i == len(parts) - 1:
      current = node[part]
      if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{dotted}: is a section; set one of its keys: {sorted(current.keys())}")
      with node.ignore_type():
        node[part] = _parse_value(dotted, text, current)
    else:
      node = node[part]


def _add_model_field(model: ml_collections.ConfigDict, field: str, dotted: str) -> None:
  """`--config.model.<field>` may set any Wav2Vec2Config field: add it with the preset's value."""
  from xlsr_jax.models.config import PRESETS
  import jax.numpy as jnp
  fields = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
  if field not in fields:
    raise ConfigError(f"--config.{dotted}: model.{field} is not a model field; {_nearest(field, fields)}")
  preset = PRESETS.get(model.get("preset"))
  if preset is None:
    raise ConfigError(f"model.preset={model.get('preset')!r} is not a preset; valid presets: {sorted(PRESETS)}")
  value = getattr(preset, field)
  model[field] = jnp.dtype(value).name if field in ("dtype", "param_dtype") else value


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """--config=path, --config.a.b=v pairs, and the remaining arguments."""
  path, overrides, rest = None, [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config":
      path = next(it, None)
    elif arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      if not sep:
        value = next(it, None)
        if value is None:
          raise ConfigError(f"{arg}: missing value")
      overrides.append((key, value))
    else:
      rest.append(arg)
  return path, overrides, rest


def model_config_from(config: ml_collections.ConfigDict, base: Wav2Vec2Config | None = None
                      ) -> Wav2Vec2Config:
  """The Wav2Vec2Config of `config.model`: its fields (dtype names as strings) written over `base`,
  or over the preset `model.preset` when `base` is None (a loaded checkpoint's config is a base)."""
  from xlsr_jax.models.config import PRESETS, UnknownFieldError, with_fields
  model = config.model
  if base is None:
    if model.preset not in PRESETS:
      raise ConfigError(f"model.preset={model.preset!r} is not a preset; valid presets: {sorted(PRESETS)}")
    base = PRESETS[model.preset]
  try:
    return with_fields(base, {k: v for k, v in model.items() if k != "preset"})
  except UnknownFieldError as e:
    fields = [f.name for f in dataclasses.fields(Wav2Vec2Config)]
    raise ConfigError(f"model.{e.unknown[0]} is not a model field; {_nearest(e.unknown[0], fields)}"
                      ) from None
  except (ValueError, TypeError) as e:
    raise ConfigError(f"model: {e}") from e


def validate_against_template(config: ml_collections.ConfigDict, template: ml_collections.ConfigDict,
                              prefix: str = "") -> None:
  """Every key of `config` must exist in `template` (a default config) with a compatible type."""
  for key, value in config.items():
    path = f"{prefix}{key}"
    if key not in template:
      raise ConfigError(f"unknown config key {path!r}; {_nearest(key, template.keys())}")
    ref = template[key]
    if isinstance(ref, ml_collections.ConfigDict) and not isinstance(value, ml_collections.ConfigDict):
      raise ConfigError(f"config key {path!r} must be a section")
    if isinstance(ref, ml_collections.ConfigDict):
      if key == "model":  # model fields are checked against Wav2Vec2Config instead
        continue
      validate_against_template(value, ref, prefix=f"{path}.")
    elif ref is not None and value is not None:
      ok = (isinstance(value, type(ref)) or (isinstance(ref, float) and isinstance(value, int))
            or (isinstance(ref, (tuple, list)) and isinstance(value, (tuple, list))))
      if not ok:
        raise ConfigError(f"config key {path!r}: expected {type(ref).__name__}, "
                          f"got {type(value).__name__} {value!r}")


def load_validated(path: str | None, overrides: Sequence[tuple[str, str]],
                   template: ml_collections.ConfigDict, usage: str) -> ml_collections.ConfigDict:
  """`get_config()` of `path` with `--config.a.b=v` overrides applied, checked against `template`
  (a default config) before and after the overrides; `usage` is the error when no path is given."""
  if path is None:
    raise ConfigError(f"{usage} is required")
  config = load_config_file(path)
  validate_against_template(config, template)
  for key, value in overrides:
    apply_override(config, key, value)
  validate_against_template(config, template)
  return config
