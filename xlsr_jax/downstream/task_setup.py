"""What a downstream run is: the validated config, the corpus and its split indexes, the encoder
to start from (`config.init`), and the task's model, labels and initial parameters.

Used by `xlsr_jax.downstream.evaluation_run` (the run) before anything is trained.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from xlsr_jax.config_loading import ConfigError, load_validated, split_argv


class TaskError(ValueError):
  """A checkpoint, vocabulary or head that does not fit the task; the message names both sides."""


def parse_config(argv: list[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
  from xlsr_jax.downstream.task_config_defaults import get_default_config
  from xlsr_jax.downstream.tasks import task_for
  path, overrides, rest = split_argv(argv)
  config = load_validated(path, overrides, get_default_config(),
                          "--config=experiments/downstream/<task>.py")
  task = task_for(config)
  if config.finetune.mode not in ("finetune", "probe"):
    raise ConfigError(f"finetune.mode={config.finetune.mode!r} is not 'finetune' or 'probe'")
  from xlsr_jax.downstream.ml_superb import SUBSAMPLINGS
  if config.ml_superb.subsampling not in SUBSAMPLINGS:
    raise ConfigError(f"ml_superb.subsampling={config.ml_superb.subsampling!r} is not one of "
                      f"{SUBSAMPLINGS}")
  if config.ml_superb.budget_minutes <= 0:
    raise ConfigError(f"ml_superb.budget_minutes={config.ml_superb.budget_minutes} must be > 0")
  check_probe_config(config)
  task.check_config(config)
  from xlsr_jax.downstream import task_config_checks
  task_config_checks.validate(config)
  return config, rest


def check_probe_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the probe.* key whose value is not one we know."""
  from xlsr_jax.downstream import probes
  p = config.probe
  for key, allowed in (("solver", ("lbfgs", "sgd")), ("layers", probes.LAYER_MODES),
                       ("class_weight", probes.CLASS_WEIGHTS),
                       ("select_metric", probes.SELECT_METRICS)):
    if p[key] not in allowed:
      raise ConfigError(f"probe.{key}={p[key]!r} is not one of {tuple(allowed)}")
  if not p.l2_grid or min(p.l2_grid) <= 0:
    raise ConfigError(f"probe.l2_grid={list(p.l2_grid)} must be a non-empty list of positive "
                      f"strengths")
  if not 0 < p.holdout_fraction < 1:
    raise ConfigError(f"probe.holdout_fraction={p.holdout_fraction} must be in (0, 1)")


def model_config(config: ml_collections.ConfigDict, loaded_config=None):
  """The encoder config: the loaded one (or the preset for init=random) + config.model overrides
  + the fine-tuning layerdrop, with the feature encoder's gradient cut when it is frozen. With a
  loaded init, a model.* field that would give its parameters other shapes is refused (ConfigError
  naming both values); the others (dropouts, dtype, ...) are applied."""
  from xlsr_jax.config_loading import model_config_from
  cfg = model_config_from(config, loaded_config)
  if loaded_config is not None:
    check_model_overrides(config, loaded_config, cfg)
  f = config.finetune
  return cfg.replace(layerdrop=f.layerdrop,
                     feature_grad_mult=0.0 if f.freeze_feature_encoder else cfg.feature_grad_mult)


def _param_shapes(model_cfg) -> dict[str, tuple]:
  """{parameter path: shape} of the encoder of `model_cfg` (shapes only, nothing allocated)."""
  import jax
  from xlsr_jax.models.params import abstract_params
  from xlsr_jax.models.wav2vec2 import Wav2Vec2Model
  tree = abstract_params(Wav2Vec2Model(model_cfg), boxed=False)
  return {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_model_overrides(config: ml_collections.ConfigDict, loaded, merged) -> None:
  """ConfigError when config.model asks for another architecture than the loaded init's `loaded`:
  a model.preset other than the default whose parameter shapes differ, or a field override that
  changes them (`merged`: the init's config with the overrides). Names each field's two values."""
  import dataclasses
  from xlsr_jax.downstream.task_config_defaults import get_default_config
  from xlsr_jax.models.config import PRESETS
  where = f"the init {config.init}"
  base: list = []  # the init's shapes, computed when first needed

  def culprits(other) -> list[str]:  # the differing fields that change the parameter shapes
    names = [f.name for f in dataclasses.fields(other) if getattr(other, f.name) != getattr(loaded, f.name)]
    if not names:
      return []
    base[:] = base or [_param_shapes(loaded)]
    if _param_shapes(other) == base[0]:
      return []

    def changes_shapes(name: str) -> bool:
      try:
        return _param_shapes(loaded.replace(**{name: getattr(other, name)})) != base[0]
      except (ValueError, TypeError):  # not valid alone (e.g. heads that do not divide the width)
        return True
    rates = [n for n in names if isinstance(getattr(other, n), float)]  # no shape is a float
    return [n for n in names if n not in rates and changes_shapes(n)] or names

  preset = config.model.preset
  if preset != get_default_config().model.preset and preset in PRESETS:
    fields = culprits(PRESETS[preset])
    if fields:
      values = ", ".join(f"{n}={getattr(PRESETS[preset], n)!r} vs {getattr(loaded, n)!r}" for n in fields)
      raise ConfigError(f"model.preset={preset} conflicts with {where} ({values}): an init brings its "
                        f"own architecture; drop --config.model.preset or pick an init of that size")
  fields = [n for n in culprits(merged) if n in config.model]
  if fields:
    values = ", ".join(f"model.{n}={getattr(merged, n)!r} vs the init's {getattr(loaded, n)!r}"
                       for n in fields)
    raise ConfigError(f"{values}: {where} has parameters of other shapes; drop the override "
                      f"(an init brings its own architecture) or pick an init of that size")


def open_corpus(config: ml_collections.ConfigDict):
  import tensorflow_datasets as tfds
  data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  if config.data.corpus.partition("/")[0] == "synthetic_speech":
    from data_pipelines.synthetic_speech import corpus_builder, not_built_message
    builder = corpus_builder(config.data.corpus, data_dir)
    if not builder.is_prepared():
      if not config.data.build_if_missing:
        raise TaskError(not_built_message(config.data.corpus, data_dir))
      builder.download_and_prepare()
    return builder
  try:
    return tfds.builder(config.data.corpus, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:  # not TFDS's list of every dataset it knows
    raise TaskError(f"data.corpus={config.data.corpus!r} is neither built in data.data_dir="
                    f"{config.data.data_dir} nor a TFDS dataset: fix the name or build it first "
                    f"(python -m data_pipelines.corpora --help)") from None


def build_task(task, config, loaded, train_index):
  """(model, init params tree of the loaded parts, labeler, label info) of `task` (a
  tasks.Task), on the encoder config of `model_config`."""
  cfg = model_config(config, None if loaded.source == "random" else loaded.config)
  return task.build(config, loaded, cfg, train_index)


@dataclasses.dataclass(frozen=True)
class TaskData:
  """The corpus builder and the training / test splits' names and text indexes."""
  builder: Any
  train_names: list[str]
  test_names: list[str]
  train_index: Any
  test_index: Any


def read_task_data(task, config: ml_collections.ConfigDict) -> TaskData:
  """The corpus and the split indexes `task` (a tasks.Task) reads (speech translation X -> En
  leaves English out)."""
  from xlsr_jax.downstream import data as data_lib
  d = config.data
  builder = open_corpus(config)
  train_names = task.split_names(config, data_lib.split_names(builder, d.train_split, d.languages),
                                 d.train_split)
  test_names = task.split_names(config, data_lib.split_names(builder, d.eval_split, d.languages),
                                d.eval_split)
  return TaskData(builder, train_names, test_names, data_lib.index_split(builder, train_names),
                  data_lib.index_split(builder, test_names))


def load_init(config: ml_collections.ConfigDict):
  """The encoder of config.init (encoders.LoadedEncoder); "random" is the preset's architecture,
  initialised by the task model itself (seed init_seed)."""
  from xlsr_jax.checkpoints.hf_translation import is_speech_to_text
  from xlsr_jax.config_loading import model_config_from
  from xlsr_jax.downstream import encoders
  if config.init != "random" and os.path.isdir(config.init) and is_speech_to_text(config.init):
    raise encoders.InitError(
        f"{config.init} is a Hugging Face SpeechEncoderDecoderModel: convert it first with "
        f"python -m xlsr_jax.convert --from=hf --input={config.init} --output=DIR, then "
        f"--config.init=DIR")
  if config.init == "random":
    return encoders.LoadedEncoder({}, model_config_from(config), "random", "random")
  return encoders.load_encoder(config.init)
