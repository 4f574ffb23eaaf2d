"""What a downstream run is: the validated config, the corpus and its split indexes, the encoder
to start from (`config.init`), and the task's model, labels and initial parameters.

Used by `xlsr_jax.downstream.evaluate` (the run) before anything is trained.
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
  from xlsr_jax.downstream.defaults import TASKS, get_default_config
  path, overrides, rest = split_argv(argv)
  config = load_validated(path, overrides, get_default_config(),
                          "--config=experiments/downstream/<task>.py")
  if config.task not in TASKS:
    raise ConfigError(f"task={config.task!r} is not one of {TASKS}")
  if config.finetune.mode not in ("finetune", "probe"):
    raise ConfigError(f"finetune.mode={config.finetune.mode!r} is not 'finetune' or 'probe'")
  if config.task in ("asr", "ast") and config.finetune.mode == "probe":
    raise ConfigError(f"task={config.task} trains its head with the encoder: finetune.mode must "
                      f"be 'finetune'")
  if config.task == "ml_superb" and config.finetune.mode != "probe":
    raise ConfigError("task=ml_superb trains a downstream model on the frozen encoder: "
                      "finetune.mode must be 'probe'")
  from xlsr_jax.downstream.ml_superb import SUBSAMPLINGS
  if config.ml_superb.subsampling not in SUBSAMPLINGS:
    raise ConfigError(f"ml_superb.subsampling={config.ml_superb.subsampling!r} is not one of "
                      f"{SUBSAMPLINGS}")
  if config.ml_superb.budget_minutes <= 0:
    raise ConfigError(f"ml_superb.budget_minutes={config.ml_superb.budget_minutes} must be > 0")
  check_probe_config(config)
  from xlsr_jax.downstream import validation
  validation.validate(config)
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
  if uses_lbfgs_probe(config) and config.head.projection_dim:
    raise ConfigError("head.projection_dim must be 0 with probe.solver=lbfgs (a linear probe); "
                      "use --config.probe.solver=sgd for a projection")


def uses_lbfgs_probe(config: ml_collections.ConfigDict) -> bool:
  """LID / SID with a frozen encoder and the converged probe (downstream.linear_probe)."""
  return (config.task in ("lid", "sid") and config.finetune.mode == "probe"
          and config.probe.solver == "lbfgs")


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
  from xlsr_jax.downstream.defaults import get_default_config
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
    from data_pipelines.synthetic_speech.builder import corpus_builder, not_built_message
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


def build_task(config, loaded, train_index):
  """(model, init params tree of the loaded parts, label info) for the task."""
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream import heads
  from xlsr_jax.downstream.vocabulary import Vocabulary, build_vocabulary
  cfg = model_config(config, None if loaded.source == "random" else loaded.config)
  if config.task == "ast":
    from xlsr_jax.downstream.translation import task as translation
    try:
      model, loaded_parts, labeler, tokenizer, _ = translation.build(config, loaded, cfg, train_index)
    except ValueError as e:
      raise TaskError(str(e)) from e
    return model, loaded_parts, labeler, tokenizer
  loaded_parts: dict[str, Any] = {"wav2vec2": loaded.params} if loaded.params else {}
  if config.task == "ml_superb":
    from xlsr_jax.downstream import ml_superb
    m = config.ml_superb
    keep_ids, seconds = ml_superb.budget_subset(train_index, 60.0 * m.budget_minutes,
                                                seed=config.train.seed,
                                                max_seconds=m.max_utterance_seconds)
    chosen = set(keep_ids)
    tokens = ml_superb.language_tokens(sorted(set(train_index.languages))) if m.lid else {}
    vocab = ml_superb.build_lid_vocabulary(
        [t for i, t in zip(train_index.ids, train_index.transcripts) if i in chosen], tokens)
    model = ml_superb.Wav2Vec2ForMLSuperb(
        cfg, vocab.size, m.projection_dim, m.hidden_size, m.num_heads, m.ffn_size, m.num_layers,
        m.dropout, m.subsampling)
    labeler = ml_superb.MLSuperbLabeler("asr", vocabulary=vocab,
                                        max_label_length=config.asr.max_label_length,
                                        lid_tokens=tuple(tokens.items()))
    return model, loaded_parts, labeler, ml_superb.TaskInfo(vocab, tokens, keep_ids, seconds)
  if config.task == "asr":
    if config.asr.vocabulary:
      vocab = Vocabulary.load(config.asr.vocabulary)
    elif loaded.ctc_head is not None and loaded.vocabulary is not None:
      vocab = loaded.vocabulary
    else:
      vocab = build_vocabulary(train_index.transcripts, lowercase=config.asr.lowercase)
    if loaded.ctc_head is not None:
      vocab.check_head(int(loaded.ctc_head["kernel"].shape[-1]), loaded.path)
      loaded_parts["lm_head"] = loaded.ctc_head
    model = heads.Wav2Vec2ForCTC(cfg, vocab.size, config.finetune.final_dropout)
    labeler = data_lib.Labeler("asr", vocabulary=vocab, max_label_length=config.asr.max_label_length)
    return model, loaded_parts, labeler, vocab
  names = data_lib.class_names_from(train_index, config.task)
  if loaded.classifier_head is not None:
    stored = int(loaded.classifier_head["classifier"]["kernel"].shape[-1])
    if stored != len(names):
      raise TaskError(f"the classifier of {loaded.path} has {stored} classes but task "
                      f"{config.task} on {config.data.corpus} has {len(names)}; "
                      f"start from an encoder without this head")
    if uses_lbfgs_probe(config):
      pass  # the L-BFGS probe is fitted afresh on the features; a stored head is not reused
    elif "feature_mean" in loaded.classifier_head:
      raise TaskError(f"{loaded.path} holds an L-BFGS probe head (standardised features), which "
                      f"the SGD head cannot continue from; use probe.solver=lbfgs or start from "
                      f"an encoder without this head")
    else:
      loaded_parts["head"] = loaded.classifier_head
  if uses_lbfgs_probe(config):  # the head that holds the fitted probe (probes.head_params)
    layers = config.probe.layers
    model = heads.Wav2Vec2ForUtteranceClassification(
        cfg, len(names), config.head.pooling, layers == "weighted", 0, freeze_encoder=True,
        concat_layers=layers == "concat", standardize=True)
  else:
    model = heads.Wav2Vec2ForUtteranceClassification(
        cfg, len(names), config.head.pooling, config.head.layer_weighting,
        config.head.projection_dim, freeze_encoder=config.finetune.mode == "probe")
  return model, loaded_parts, data_lib.Labeler(config.task, class_names=names), names


@dataclasses.dataclass(frozen=True)
class TaskData:
  """The corpus builder and the training / test splits' names and text indexes."""
  builder: Any
  train_names: list[str]
  test_names: list[str]
  train_index: Any
  test_index: Any


def read_task_data(config: ml_collections.ConfigDict) -> TaskData:
  """The corpus and its split indexes (speech translation X -> En leaves English out)."""
  from xlsr_jax.downstream import data as data_lib
  d = config.data
  builder = open_corpus(config)
  train_names = data_lib.split_names(builder, d.train_split, d.languages)
  test_names = data_lib.split_names(builder, d.eval_split, d.languages)
  if config.task == "ast" and not config.translation.include_english:  # X -> En
    from data_pipelines.features import language_split_name
    train_names = [n for n in train_names if n != language_split_name(d.train_split, "en")]
    test_names = [n for n in test_names if n != language_split_name(d.eval_split, "en")]
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


def check_task_data(config: ml_collections.ConfigDict, data: TaskData, label_info,
                    labeler=None) -> None:
  """TaskError when no training utterance fits or a transcript's labels exceed
  asr.max_label_length (checked here, before training, not when the test split is scored);
  warnings for unseen test classes and for ML-SUPERB languages under their budget."""
  from xlsr_jax.downstream import data as data_lib
  task, d, train_index = config.task, config.data, data.train_index
  if task in ("asr", "ast") and not any(n <= d.max_sample_size for n in train_index.num_samples):
    raise TaskError(f"no training utterance is within data.max_sample_size={d.max_sample_size} "
                    f"samples (the shortest has {min(train_index.num_samples, default=0)}); "
                    f"{task} drops longer ones: raise data.max_sample_size")
  if task in ("asr", "ml_superb") and labeler is not None:
    check_label_lengths(labeler, train_index, "train", max_samples=d.max_sample_size)
    check_label_lengths(labeler, data.test_index, "test")  # scored whole, whatever its length
  if task in ("lid", "sid"):
    data_lib.warn_unseen(label_info, data.test_index, task)
  if task == "ml_superb":
    budget = 60.0 * config.ml_superb.budget_minutes
    short = {l: s for l, s in label_info.seconds.items() if s < 0.9 * budget}
    listing = ", ".join(f"{l} {s / 60:.1f} min" for l, s in sorted(short.items())[:10])
    print(f"ml_superb: {len(label_info.keep_ids)} training utterances, budget "
          f"{config.ml_superb.budget_minutes:g} min per language "
          f"({sum(label_info.seconds.values()) / 60:.1f} min in all); "
          f"{len(short)} language(s) have under 90% of it: {listing}", flush=True)


def check_label_lengths(labeler, index, split: str, max_samples: int | None = None) -> None:
  """TaskError naming the longest transcript (and how many) whose CTC labels exceed the
  labeler's max_label_length; with max_samples only utterances training keeps are checked."""
  from xlsr_jax.downstream.vocabulary import VocabularyError
  limit = labeler.max_label_length
  over, longest = 0, (0, "")
  for text, language, samples in zip(index.transcripts, index.languages, index.num_samples):
    if max_samples is not None and samples > max_samples:
      continue
    try:
      length = labeler.label_length(text, language)
    except VocabularyError as e:
      raise TaskError(f"{split} split: {e}") from e
    if length > limit:
      over += 1
      longest = max(longest, (length, text))
  if over:
    raise TaskError(f"{over} {split} transcript(s) need more than asr.max_label_length={limit} "
                    f"CTC labels (the longest {longest[0]}: {longest[1][:60]!r}...); set "
                    f"--config.asr.max_label_length={longest[0]} or more")
