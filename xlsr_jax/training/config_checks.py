"""Start-up checks of a pretraining config: one table of value ranges and relations between values.

Every key of `defaults.py` that has a range, and every relation between keys that a run depends on,
is one row of `RULES` (checked in order, the first failure stops with a `ConfigError` naming the
key(s), their values and what was expected). `xlsr_jax.main` and `xlsr_jax.plan` run it right after
loading the config, before jax.distributed, data, compilation or any file in the workdir; the rows
that need the device count (`DEVICE_RULES`) run once the devices are known, still before anything
is written.

A row reads config keys ("optimizer.peak_lr"), fields of the model config ("model.hidden_size",
the preset plus overrides) or derived values named in `DERIVED` ("crop_frames"). Adding a key:
declare it in defaults.py, then add its row here, e.g.
  positive("data.new_key"),
  relation(("data.a", "data.b"), lambda a, b: a <= b, "data.a <= data.b"),
for a list-valued key `each(positive("data.bucket_seconds"))`, for a choice
`one_of("data.bucket_mode", ("crop", "pad"))`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections

from xlsr_jax.config_loading import ConfigError

from data_pipelines.features import SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class Rule:
  """One row: `test(*values of keys)` must be true; `expected` says what a valid value is."""
  keys: tuple[str, ...]
  test: Callable[..., bool]
  expected: str


# Row constructors (ranges of one key).

def at_least(key: str, low: float, what: str = "a number") -> Rule:
  return Rule((key,), lambda v: v >= low, f"{what} >= {low}")


def positive(key: str, what: str = "a number") -> Rule:
  return Rule((key,), lambda v: v > 0, f"{what} > 0")


def integer_at_least(key: str, low: int) -> Rule:
  return Rule((key,), lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
              f"an integer >= {low}")


def in_range(key: str, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> Rule:
  def test(v):
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  brackets = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
  return Rule((key,), test, f"a value in {brackets}")


def one_of(key: str, choices: Sequence[Any]) -> Rule:
  return Rule((key,), lambda v: v in tuple(choices), f"one of {list(choices)}")


def each(rule: Rule) -> Rule:
  """A one-key rule applied to every element of a non-empty list value."""
  return Rule(rule.keys, lambda v: isinstance(v, (list, tuple)) and len(v) > 0
              and all(rule.test(x) for x in v), f"a non-empty list, each {rule.expected}")


def relation(keys: Sequence[str], test: Callable[..., bool], expected: str) -> Rule:
  return Rule(tuple(keys), test, expected)


def _frames(num_samples: int, model) -> int:
  from xlsr_jax.models.feature_encoder import frame_lengths
  return frame_lengths(int(num_samples), model)


def _ici_sizes(c: ml_collections.ConfigDict, devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) within a slice, as `mesh.make_mesh` resolves them (ValueError if none fit)."""
  from xlsr_jax.sharding.mesh import resolve_axis_sizes
  m = c.mesh
  return resolve_axis_sizes((m.data if m.data == -1 else m.data // m.dcn_data, m.fsdp, m.tensor),
                            devices // m.dcn_data)


def _data_parallel(c: ml_collections.ConfigDict, devices: int) -> int:
  """data x fsdp devices of the mesh (the one -1 axis filled from `devices`)."""
  data, fsdp, _ = _ici_sizes(c, devices)
  return data * c.mesh.dcn_data * fsdp


def _shortest_crop(c: ml_collections.ConfigDict) -> int:
  """Samples of the shortest crop a step computes: the shortest bucket, or max_sample_size."""
  if c.data.bucket_seconds:
    return int(round(min(c.data.bucket_seconds) * SAMPLE_RATE))
  return c.data.max_sample_size


def _global_batch(c: ml_collections.ConfigDict, devices: int | None, processes: int) -> int:
  """Rows of a step (`batch_size.global_batch_rows`); with duration buckets the smallest bucket's rows
  as the loop rounds them (a multiple of the data-parallel devices x grad_accum_steps and of the
  processes, so every bucket divides as a fixed batch must)."""
  from xlsr_jax.training import batch_size
  dp = _data_parallel(c, devices) if devices else 1
  return batch_size.global_batch_rows(c, batch_size.batch_multiple(dp, c.train.grad_accum_steps,
                                                              processes))


def _is_bucket_list(v) -> bool:
  return (isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(
      x, bool) and x > 0 for x in v) and len(set(v)) == len(v))


# Derived values rows may read: name -> f(config, model config, devices, processes).
DERIVED: dict[str, Callable[..., Any]] = {
    "receptive_field": lambda c, m, d, p: m.conv_receptive_field,
    "crop_frames": lambda c, m, d, p: _frames(_shortest_crop(c), m),
    "min_crop_frames": lambda c, m, d, p: _frames(c.data.min_sample_size, m),
    "shortest_crop": lambda c, m, d, p: _shortest_crop(c),
    "global_batch": lambda c, m, d, p: _global_batch(c, d, p),
    "devices": lambda c, m, d, p: d,
    "processes": lambda c, m, d, p: p,
    "mesh_fits": lambda c, m, d, p: bool(_ici_sizes(c, d)),
    "data_parallel": lambda c, m, d, p: _data_parallel(c, d),
}

_DROPOUTS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
             "feat_quantizer_dropout", "layerdrop")


def _is_sources(v) -> bool:
  return isinstance(v, (list, tuple)) and len(v) > 0 and all(
      isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str) and s[0]
      and (s[1] is None or (isinstance(s[1], (list, tuple)) and len(s[1]) > 0)) for s in v)


def _is_patterns(v) -> bool:
  import re
  if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) and p for p in v):
    return False
  for p in v:
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"{p!r} is not a regular expression: {e}") from e
  return True


def _is_axis_rules(v) -> bool:
  from xlsr_jax.sharding.mesh import rules_from_config
  rules_from_config(v)  # ValueError names the bad rule
  return True


# Keys with no row here: booleans (their type is checked against the defaults), model.preset
# (checked by model_config_from), and free-form strings (paths, addresses).
UNCHECKED = ("model.preset", "train.compilation_cache_dir", "train.init_from",
             "distributed.coordinator_address")

RULES: list[Rule] = [
    # Model (fields of the preset plus overrides; the dataclass checks divisibility itself).
    *[in_range(f"model.{name}", 0.0, 1.0, high_open=True) for name in _DROPOUTS],
    at_least("model.feature_grad_mult", 0.0),
    positive("model.layer_norm_eps"),
    # Objective.
    one_of("objective.name", ("wav2vec2", "best_rq")),
    integer_at_least("objective.best_rq.num_codebooks", 1),
    integer_at_least("objective.best_rq.codebook_size", 2),
    integer_at_least("objective.best_rq.codebook_dim", 1),
    integer_at_least("objective.best_rq.num_mel_bins", 1),
    integer_at_least("objective.best_rq.seed", 0),
    in_range("objective.mask_prob", 0.0, 1.0),
    integer_at_least("objective.mask_length", 1),
    integer_at_least("objective.min_masks", 0),
    integer_at_least("objective.num_negatives", 1),
    positive("objective.logit_temperature"),
    at_least("objective.diversity_weight", 0.0),
    at_least("objective.feature_penalty_weight", 0.0),
    positive("objective.gumbel_start"),
    positive("objective.gumbel_end"),
    in_range("objective.gumbel_decay", 0.0, 1.0, low_open=True),
    # Optimizer.
    positive("optimizer.peak_lr"),
    integer_at_least("optimizer.warmup_steps", 0),
    in_range("optimizer.b1", 0.0, 1.0, high_open=True),
    in_range("optimizer.b2", 0.0, 1.0, high_open=True),
    positive("optimizer.eps"),
    at_least("optimizer.weight_decay", 0.0),
    at_least("optimizer.grad_clip_norm", 0.0),
    # Training loop.
    integer_at_least("train.num_steps", 1),
    integer_at_least("train.grad_accum_steps", 1),
    integer_at_least("train.seed", 0),
    integer_at_least("train.log_every", 1),
    integer_at_least("train.eval_every", 0),
    integer_at_least("train.eval_batches", 0),
    integer_at_least("train.eval_language_batches", 0),
    integer_at_least("train.checkpoint_every", 1),
    integer_at_least("train.keep_checkpoints", 1),
    integer_at_least("train.max_nonfinite_steps", 1),
    at_least("train.peak_tflops_per_device", 0.0),
    Rule(("train.init_exclude",), _is_patterns,
         "a list of regular expressions over parameter paths (e.g. ['^quantizer/'])"),
    Rule(("sharding.logical_axis_rules",), _is_axis_rules,
         "a list of [logical axis name, mesh axis / list of mesh axes / None]"),
    # Data.
    Rule(("data.split",), lambda v: isinstance(v, str) and v != "", "a split name"),
    Rule(("data.eval_split",), lambda v: isinstance(v, str) and v != "", "a split name"),
    Rule(("data.sources",), _is_sources,
         "a non-empty list of [corpus name/config, None or a non-empty list of languages]"),
    Rule(("data.data_dir",), lambda v: isinstance(v, str) and v != "", "a directory path"),
    Rule(("data.replay_sources",), lambda v: not v or _is_sources(v),
         "[] or a list of [corpus name/config, None or a non-empty list of languages]"),
    in_range("data.replay_fraction", 0.0, 1.0, high_open=True),
    Rule(("data.eval_language_sources",), lambda v: not v or _is_sources(v),
         "[] (the training sources) or a list of [corpus name/config, None or languages]"),
    in_range("data.alpha", 0.0, 1.0),
    integer_at_least("data.max_sample_size", 1),
    integer_at_least("data.min_sample_size", 1),
    positive("data.batch_seconds", "seconds"),
    integer_at_least("data.interleave_cycle_length", 1),
    integer_at_least("data.prefetch_batches", 0),
    Rule(("data.bucket_seconds",), _is_bucket_list,
         "a list of distinct crop lengths in seconds, each > 0 ([] = no buckets)"),
    one_of("data.bucket_mode", ("crop", "pad")),
    # Mesh and multi-host.
    *[Rule((f"mesh.{axis}",), lambda v: isinstance(v, int) and (v >= 1 or v == -1),
           "an integer >= 1, or -1 (fill from the devices)") for axis in ("data", "fsdp", "tensor")],
    integer_at_least("mesh.dcn_data", 1),
    relation(("mesh.data", "mesh.fsdp", "mesh.tensor"), lambda *s: list(s).count(-1) <= 1,
             "at most one mesh axis = -1"),
    integer_at_least("distributed.num_processes", 0),
    integer_at_least("distributed.process_id", -1),

    # Relations between values.
    relation(("objective.gumbel_end", "objective.gumbel_start"), lambda end, start: end <= start,
             "objective.gumbel_end <= objective.gumbel_start (tau anneals down)"),
    relation(("data.min_sample_size", "data.max_sample_size"), lambda lo, hi: lo <= hi,
             "data.min_sample_size <= data.max_sample_size"),
    relation(("data.max_sample_size", "receptive_field"), lambda crop, field: crop >= field,
             "a crop at least the feature encoder's receptive field (a shorter one gives no frame "
             "and trains to nothing)"),
    relation(("data.bucket_seconds", "data.max_sample_size"),
             lambda b, crop: not b or max(b) * SAMPLE_RATE <= crop,
             "every duration bucket within data.max_sample_size (the longest crop)"),
    relation(("shortest_crop", "receptive_field"), lambda crop, field: crop >= field,
             "the shortest duration bucket at least the feature encoder's receptive field"),
    relation(("data.min_sample_size", "min_crop_frames", "objective.mask_length"),
             lambda _, frames, length: frames > length,
             "the shortest utterance kept (data.min_sample_size) to have more frames than "
             "objective.mask_length, so that a mask span fits"),
    relation(("objective.num_negatives", "crop_frames"), lambda k, frames: k < frames,
             "fewer distractors than the frames of a crop (data.max_sample_size, or the shortest "
             "duration bucket)"),
    relation(("data.batch_seconds", "data.max_sample_size", "global_batch"),
             lambda s, crop, batch: batch >= 1,
             "at least one crop per batch: data.batch_seconds * 16000 >= data.max_sample_size / 2"),
    relation(("train.grad_accum_steps", "global_batch"), lambda k, batch: batch % k == 0,
             "train.grad_accum_steps to divide the global batch (data.batch_seconds * 16000 / "
             "data.max_sample_size utterances)"),
    relation(("train.eval_every", "train.eval_batches"), lambda every, n: every == 0 or n >= 1,
             "train.eval_batches >= 1 when train.eval_every > 0"),
    relation(("data.replay_fraction", "data.replay_sources"), lambda r, sources: not r or sources,
             "data.replay_sources (what to replay) when data.replay_fraction > 0"),
    relation(("train.eval_language_batches", "train.eval_every"), lambda n, every: not n or every,
             "train.eval_every > 0 when train.eval_language_batches > 0 (scored at each eval)"),
    relation(("train.init_exclude", "train.init_from"), lambda exclude, path: not exclude or path,
             "train.init_exclude only with train.init_from (it names what not to load)"),
]

# Rows that need the number of devices and processes (after jax.distributed is initialised).
DEVICE_RULES: list[Rule] = [
    relation(("mesh.dcn_data", "devices"), lambda dcn, have: have % dcn == 0,
             "mesh.dcn_data to divide the number of devices"),
    relation(("mesh.data", "mesh.fsdp", "mesh.tensor", "devices", "mesh_fits"),
             lambda *_: True, "a mesh (data x fsdp x tensor) that uses every device"),
    relation(("global_batch", "train.grad_accum_steps", "data_parallel"),
             lambda batch, k, dp: (batch // k) % dp == 0,
             "each micro-batch (global batch / train.grad_accum_steps) to divide over the data x "
             "fsdp devices"),
    relation(("global_batch", "processes"), lambda batch, p: batch % p == 0,
             "the global batch to divide over the processes"),
]


def _lookup(key: str, config, model, devices, processes, cache: dict) -> Any:
  if key in cache:
    return cache[key]
  if key in DERIVED:
    value = DERIVED[key](config, model, devices, processes)
  elif key.startswith("model."):
    value = getattr(model, key[len("model."):])
  else:
    value = config
    for part in key.split("."):
      value = value[part]
  cache[key] = value
  return value


def check(config: ml_collections.ConfigDict, rules: Sequence[Rule], model=None,
          devices: int | None = None, processes: int = 1) -> None:
  """Raises ConfigError for the first row of `rules` that `config` fails (one line)."""
  if model is None:
    from xlsr_jax.config_loading import model_config_from
    model = model_config_from(config)
  cache: dict[str, Any] = {}
  for rule in rules:
    try:
      values = [_lookup(k, config, model, devices, processes, cache) for k in rule.keys]
      ok = bool(rule.test(*values))
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, KeyError) as e:
      values, ok = None, False
      detail = f" ({type(e).__name__}: {e})"
    else:
      detail = ""
    if not ok:
      if values is None:
        shown = ", ".join(rule.keys)
      else:
        shown = ", ".join(f"{k}={v!r}" for k, v in zip(rule.keys, values))
      raise ConfigError(f"{shown}: expected {rule.expected}{detail}")


def validate(config: ml_collections.ConfigDict, model=None) -> None:
  """Every row of RULES (no devices needed): call right after loading the config."""
  check(config, RULES, model)


def validate_devices(config: ml_collections.ConfigDict, devices: int, processes: int,
                     model=None) -> None:
  """The rows that need the device and process counts (after jax.distributed.initialize)."""
  check(config, DEVICE_RULES, model, devices, processes)
