"""Downstream evaluation of an encoder: fine-tune (or probe) on a task, score the test split, report.

  python -m xlsr_jax.evaluate --config=experiments/downstream/<asr|lid|sid|ast>.py \
      --config.init=<export dir | HF dir | fairseq .pt | random> --workdir=DIR [--config.a.b=v ...]

Top to bottom: config -> data index (labels, vocabulary) -> encoder -> model -> mesh and jitted
step -> restore or init -> train (progress line, TensorBoard, Orbax checkpoints; re-running the
same command resumes) -> test split -> metrics.json, report.md + plots (downstream.reports) ->
the fine-tuned model in DIR/model (model_files layout, with vocab.json for ASR).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

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
  + the fine-tuning layerdrop, with the feature encoder's gradient cut when it is frozen."""
  from xlsr_jax.config_loading import model_config_from
  cfg = model_config_from(config, loaded_config)
  f = config.finetune
  return cfg.replace(layerdrop=f.layerdrop,
                     feature_grad_mult=0.0 if f.freeze_feature_encoder else cfg.feature_grad_mult)


def open_corpus(config: ml_collections.ConfigDict):
  import tensorflow_datasets as tfds
  data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  name, _, builder_config = config.data.corpus.partition("/")
  if name == "synthetic_speech":
    from data_pipelines.synthetic_speech.builder import SyntheticSpeech
    builder = SyntheticSpeech(config=builder_config or "default", data_dir=data_dir)
    if not builder.is_prepared():
      if not config.data.build_if_missing:
        raise FileNotFoundError(f"{config.data.corpus} is not built in {data_dir}; build it with "
                                f"`python -m data_pipelines.synthetic_speech --data_dir={data_dir}`"
                                f" or set --config.data.build_if_missing=true")
      builder.download_and_prepare()
    return builder
  return tfds.builder(config.data.corpus, data_dir=data_dir)


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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tune / probe, evaluate the test split, write the report; returns the metrics."""
  from xlsr_jax.checkpoints import model_files
  from xlsr_jax.checkpoints.manager import CheckpointManager, restore_target, unbox
  from xlsr_jax.config_loading import model_config_from
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream import encoders, finetune
  from xlsr_jax.sharding import mesh as mesh_lib
  from xlsr_jax.training import metrics as metrics_lib

  workdir = os.path.abspath(workdir)
  task, d, f_cfg = config.task, config.data, config.finetune

  builder = open_corpus(config)
  train_names = data_lib.split_names(builder, d.train_split, d.languages)
  test_names = data_lib.split_names(builder, d.eval_split, d.languages)
  if task == "ast" and not config.translation.include_english:  # X -> En
    from data_pipelines.features import language_split_name
    train_names = [n for n in train_names if n != language_split_name(d.train_split, "en")]
    test_names = [n for n in test_names if n != language_split_name(d.eval_split, "en")]
  train_index = data_lib.index_split(builder, train_names)
  test_index = data_lib.index_split(builder, test_names)

  from xlsr_jax.convert import _is_speech_to_text
  if config.init != "random" and os.path.isdir(config.init) and _is_speech_to_text(config.init):
    raise encoders.InitError(
        f"{config.init} is a Hugging Face SpeechEncoderDecoderModel: convert it first with "
        f"python -m xlsr_jax.convert --from=hf --input={config.init} --output=DIR, then "
        f"--config.init=DIR")
  if config.init == "random":  # the model's own initialisation (seed init_seed) is the encoder
    loaded = encoders.LoadedEncoder({}, model_config_from(config), "random", "random")
  else:
    loaded = encoders.load_encoder(config.init)
  model, loaded_parts, labeler, label_info = build_task(config, loaded, train_index)
  if task in ("asr", "ast") and not any(n <= d.max_sample_size for n in train_index.num_samples):
    raise TaskError(f"no training utterance is within data.max_sample_size={d.max_sample_size} "
                    f"samples (the shortest has {min(train_index.num_samples, default=0)}); "
                    f"{task} drops longer ones: raise data.max_sample_size")
  if task in ("lid", "sid"):
    data_lib.warn_unseen(label_info, test_index, task)
  if task == "ml_superb":
    budget = 60.0 * config.ml_superb.budget_minutes
    short = {l: s for l, s in label_info.seconds.items() if s < 0.9 * budget}
    listing = ", ".join(f"{l} {s / 60:.1f} min" for l, s in sorted(short.items())[:10])
    print(f"ml_superb: {len(label_info.keep_ids)} training utterances, budget "
          f"{config.ml_superb.budget_minutes:g} min per language "
          f"({sum(label_info.seconds.values()) / 60:.1f} min in all); "
          f"{len(short)} language(s) have under 90% of it: {listing}", flush=True)
  print(f"{task}: init={config.init} ({loaded.source}), {len(train_index)} train / "
        f"{len(test_index)} test utterances, mode={f_cfg.mode}"
        + (f", solver={config.probe.solver}" if task in ("lid", "sid") and f_cfg.mode == "probe"
           else ""), flush=True)
  if uses_lbfgs_probe(config):
    from xlsr_jax.downstream import linear_probe
    params = loaded.params or encoders.random_encoder(model.config, config.init_seed)
    results = linear_probe.run_probe(config, workdir, builder, params, model.config, model,
                                     labeler, label_info, test_index)
    results["init_source"] = loaded.source
    return results

  m = config.mesh
  mesh = mesh_lib.make_mesh(m.data, m.fsdp, m.tensor, dcn_data=m.dcn_data)
  tuner = finetune.Finetuner(model, "asr" if task == "ml_superb" else task, config, mesh,
                             d.max_sample_size, d.batch_size)
  manager = CheckpointManager(os.path.join(workdir, "checkpoints"),
                              save_every=config.train.checkpoint_every,
                              keep=config.train.keep_checkpoints)
  restored = manager.restore_latest(restore_target(tuner.abstract_state, tuner.state_sharding))
  if restored is None:
    state = tuner.create_state(loaded_parts)
  else:
    state = restored[0]
    print(f"resumed from step {int(state.step)} in {manager.directory}", flush=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:  # only once the resume checks passed
    f.write(config.to_json(indent=2))

  start = int(state.step)
  train_iter = data_lib.train_iterator(
      builder, train_names, labeler, batch_size=d.batch_size, max_samples=d.max_sample_size,
      seed=config.train.seed, start_step=start, normalize=d.normalize,
      drop_longer=task in ("asr", "ast", "ml_superb"),
      keep_ids=label_info.keep_ids if task == "ml_superb" else None)
  writer = metrics_lib.MetricWriter(workdir, f_cfg.num_steps)
  curves: dict[str, list[tuple[int, float]]] = {}
  history_path = os.path.join(workdir, "train_history.json")
  if start and os.path.exists(history_path):
    with open(history_path) as fh:
      curves = {k: [tuple(p) for p in v] for k, v in json.load(fh).items()}
  pending: list[dict] = []
  throughput = metrics_lib.Throughput(start)
  for step in range(start, f_cfg.num_steps):
    batch = next(train_iter)
    state, step_metrics = tuner.step(state, batch)
    pending.append(step_metrics)
    done = step + 1
    if done % config.train.log_every == 0 or done == f_cfg.num_steps:
      values = {k: float(np.mean([float(p[k]) for p in pending])) for k in pending[-1]}
      values["steps_per_second"], _ = throughput.update(done)
      pending = []
      writer.write(done, values)
      for k in ("loss", "accuracy", "nll", "learning_rate"):
        if k in values:
          curves.setdefault(f"train_{k}", []).append((done, values[k]))
    if manager.should_save(done, last=done == f_cfg.num_steps):
      manager.save(done, state, force=True)
      with open(history_path, "w") as fh:
        json.dump(curves, fh)
  manager.wait_until_finished()
  manager.close()

  results, report_kwargs = evaluate_split(tuner, state, builder, test_names, test_index, labeler,
                                          label_info, config)
  if task in ("lid", "sid"):  # the prior-only classifiers beside the probe (majority class, chance)
    from xlsr_jax.downstream import metrics as metrics_lib
    ids = {name: i for i, name in enumerate(label_info)}
    train_ids = np.asarray([ids[x] for x in train_index.labels(task)])
    test_ids = np.asarray([ids[x] for x in test_index.labels(task) if x in ids])
    results["baselines"] = metrics_lib.baselines(train_ids, test_ids, len(label_info))
  writer.write(f_cfg.num_steps, {k: v for k, v in results.items() if isinstance(v, float)},
               prefix="test")
  writer.close()
  results.update(task=task, init=config.init, init_source=loaded.source, steps=f_cfg.num_steps,
                 mode=f_cfg.mode)
  if task == "ast":  # training utterances left out for want of a single English target
    from xlsr_jax.downstream.translation import task as translation
    results["train_without_target"] = sum(t is None for t in translation.targets(train_index))
    results["train_utterances"] = len(train_index)
  export_dir = os.path.join(workdir, "model")
  params = jax.tree.map(np.asarray, unbox(jax.device_get(state.params)))
  metadata = {"task": task, "init": config.init}
  if task in ("lid", "sid"):
    metadata["class_names"] = list(label_info)
  if task == "ml_superb":
    metadata["lid_tokens"] = label_info.lid_tokens
  if task == "ast":
    from xlsr_jax.downstream.translation import task as translation
    translation.save_model(export_dir, params, model.config, label_info, metadata)
  else:
    model_files.save_model(export_dir, params, model.config, metadata)
  if task == "asr":
    label_info.save(export_dir)
  if task == "ml_superb":
    label_info.vocab.save(export_dir)
  try:
    from xlsr_jax.downstream import reports
    report = reports.write_report(os.path.join(workdir, "report"), task,
                                  {k: v for k, v in results.items() if k != "examples"},
                                  curves=curves or None, **report_kwargs)
    if task == "ast":
      from xlsr_jax.downstream.translation import task as translation
      with open(report, "a", encoding="utf-8") as fh:
        fh.write(f"\n## Scoring\n\nsacrebleu corpus BLEU `{results['bleu_signature']}`, chrF "
                 f"`{results['chrf_signature']}`; decoding: beam {config.translation.beam_width} "
                 f"(0 = greedy), length penalty {config.translation.length_penalty}.\n"
                 f"\n## Example translations\n\n"
                 f"{translation.examples_markdown(results['examples'])}\n")
  except ImportError as e:  # pragma: no cover
    logging.warning("no report written: %s", e)
    report = None
  with open(os.path.join(workdir, "metrics.json"), "w") as fh:
    json.dump(results, fh, indent=1, default=float)
  print(f"{task} test: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()
                                    if isinstance(v, float)), flush=True)
  print(f"report: {report}\nmetrics: {os.path.join(workdir, 'metrics.json')}\n"
        f"model: {export_dir}\nTensorBoard: {writer.log_dir}", flush=True)
  return results


def evaluate_split(tuner, state, builder, names, index, labeler, label_info, config
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Scores every utterance of the split: (metrics, keyword arguments for reports.write_report)."""
  from xlsr_jax.downstream import ctc
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream import metrics
  d = config.data
  longest = max(index.num_samples) if len(index) else d.max_sample_size
  max_samples = d.eval_max_sample_size or int(np.ceil(longest / 8000) * 8000)
  batches = data_lib.eval_batches(builder, names, labeler, batch_size=d.eval_batch_size,
                                  max_samples=max_samples, normalize=d.normalize)
  outputs = []
  start, seen = time.perf_counter(), 0
  ctc_task = config.task in ("asr", "ml_superb")
  fields = {"ast": ("labels", "label")}.get(
      config.task, ("labels", "label_valid") if ctc_task else ("label",))
  for batch in batches:
    keep = batch["example_valid"]
    out = jax.device_get(tuner.evaluate(state, {k: batch[k] for k in (
        "waveform", "padding_mask", "example_valid", *fields)}))
    outputs.append(({k: np.asarray(v)[keep] for k, v in out.items()},
                    {k: v[keep] for k, v in batch.items()}))
    seen += int(keep.sum())
    print(f"[eval] {seen}/{len(index)} utterances ({time.perf_counter() - start:.0f} s)", flush=True)
  if config.task == "ast":
    from xlsr_jax.downstream.translation import task as translation
    tokens = np.concatenate([o["tokens"] for o, _ in outputs])
    results = translation.score(tokens, index, label_info, config.translation.num_examples)
    results["decode_seconds"] = time.perf_counter() - start
    return results, {}
  if ctc_task:
    vocab = label_info.vocab if config.task == "ml_superb" else label_info
    decoder = None
    if config.asr.beam_width > 0:
      decoder = ctc.BeamSearchDecoder(vocab, beam_width=config.asr.beam_width,
                                      kenlm_path=config.asr.kenlm_path or None,
                                      alpha=config.asr.lm_alpha, beta=config.asr.lm_beta)
    hyps = []
    for out, _ in outputs:
      if decoder is None:
        hyps += [vocab.decode(ids) for ids in ctc.greedy_decode(out["logits"], out["frame_valid"])]
      else:
        log_probs = jax.nn.log_softmax(out["logits"], -1)
        hyps += [decoder.decode(np.asarray(lp)[v]) for lp, v in zip(log_probs, out["frame_valid"])]
    if config.task == "ml_superb":
      from xlsr_jax.downstream import ml_superb
      results = ml_superb.score(hyps, index.transcripts, index.languages, vocab,
                                label_info.lid_tokens)
      results["budget_seconds"] = label_info.seconds
      return results, {}
    from xlsr_jax.downstream.vocabulary import normalize_text
    refs = [normalize_text(t, vocab.lowercase) for t in index.transcripts]
    results = metrics.asr_metrics(refs, hyps, index.languages)
    results["examples"] = [{"language": l, "reference": r, "hypothesis": h}
                           for l, r, h in list(zip(index.languages, refs, hyps))[:20]]
    return results, {}
  names = list(label_info)
  logits = np.concatenate([o["logits"] for o, _ in outputs])
  labels = np.concatenate([b["label"] for _, b in outputs])
  preds = logits.argmax(-1)
  seen_mask = labels >= 0
  results = metrics.classification_metrics(labels[seen_mask], preds[seen_mask], names)
  results["accuracy"] = float(np.mean(preds == labels))  # unseen test classes count as errors
  results["error_rate"] = 1.0 - results["accuracy"]
  confusion = np.asarray(results.pop("confusion"))
  embeddings = np.concatenate([o["embedding"] for o, _ in outputs])
  embedding_labels = list(index.languages)  # coloured by language (issue 7), for every task
  return results, dict(confusion=confusion, labels=names, embeddings=embeddings,
                       embedding_labels=embedding_labels)


def main(argv: list[str] | None = None) -> int:
  from xlsr_jax.main import default_platforms
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog="python -m xlsr_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", metavar="FILE", help="task config file (required), e.g. "
                      "experiments/downstream/lid.py; then --config.<section>.<key>=VALUE overrides "
                      "any key of xlsr_jax/downstream/defaults.py (--config.init=INIT: the encoder)")
  parser.add_argument("--workdir", default="", help="run directory (default workdir/downstream/<task>)")
  if "-h" in argv or "--help" in argv:
    parser.print_help()
    return 0
  default_platforms()
  try:
    config, rest = parse_config(argv)
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  args = parser.parse_args(rest)
  workdir = args.workdir or os.path.join("workdir", "downstream", config.task)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "tensorflow", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from xlsr_jax.checkpoints.hf_layout import ConversionError
  from xlsr_jax.checkpoints.safe_pickle import CheckpointFileError, UnsafeCheckpointError
  from xlsr_jax.downstream.encoders import InitError
  from xlsr_jax.downstream.linear_probe import ProbeError
  from xlsr_jax.downstream.vocabulary import VocabularyError
  try:
    run(config, workdir)
  except (InitError, VocabularyError, TaskError, ProbeError, ConversionError, CheckpointFileError,
          UnsafeCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
