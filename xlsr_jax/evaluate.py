"""Downstream evaluation of an encoder: fine-tune (or probe) on a task, score the test split, report.

  python -m xlsr_jax.evaluate --config=experiments/downstream/<asr|lid|sid>.py \
      --config.init=<export dir | HF dir | fairseq .pt | random> --workdir=DIR [--config.a.b=v ...]

Top to bottom: config -> data index (labels, vocabulary) -> encoder -> model -> mesh and jitted
step -> restore or init -> train (progress line, TensorBoard, Orbax checkpoints; re-running the
same command resumes) -> test split -> metrics.json, report.md + plots (downstream.reports) ->
the fine-tuned model in DIR/model (model_files layout, with vocab.json for ASR).
"""
from __future__ import annotations

import argparse
import dataclasses
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
  if config.task == "asr" and config.finetune.mode == "probe":
    raise ConfigError("task=asr trains a CTC head with the encoder: finetune.mode must be 'finetune'")
  from xlsr_jax.downstream import validation
  validation.validate(config)
  return config, rest


def model_config(config: ml_collections.ConfigDict, loaded_config=None):
  """The encoder config: the loaded one (or the preset for init=random) + config.model overrides
  + the fine-tuning layerdrop, with the feature encoder's gradient cut when it is frozen."""
  from xlsr_jax.config_loading import model_config_from
  import jax.numpy as jnp
  if loaded_config is None:
    cfg = model_config_from(config)
  else:
    fields = {f.name for f in dataclasses.fields(loaded_config)}
    overrides = {}
    for key, value in config.model.items():
      if key == "preset":
        continue
      if key not in fields:
        raise ConfigError(f"model.{key} is not a model field")
      overrides[key] = jnp.dtype(value) if key in ("dtype", "param_dtype") else (
          tuple(value) if isinstance(value, list) else value)
    cfg = loaded_config.replace(**overrides)
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
  loaded_parts: dict[str, Any] = {"wav2vec2": loaded.params} if loaded.params else {}
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
    loaded_parts["head"] = loaded.classifier_head
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
  train_index = data_lib.index_split(builder, train_names)
  test_index = data_lib.index_split(builder, test_names)

  if config.init == "random":  # the model's own initialisation (seed init_seed) is the encoder
    loaded = encoders.LoadedEncoder({}, model_config_from(config), "random", "random")
  else:
    loaded = encoders.load_encoder(config.init)
  model, loaded_parts, labeler, label_info = build_task(config, loaded, train_index)
  if task != "asr":
    data_lib.warn_unseen(label_info, test_index, task)
  print(f"{task}: init={config.init} ({loaded.source}), {len(train_index)} train / "
        f"{len(test_index)} test utterances, mode={f_cfg.mode}", flush=True)

  m = config.mesh
  mesh = mesh_lib.make_mesh(m.data, m.fsdp, m.tensor, dcn_data=m.dcn_data)
  tuner = finetune.Finetuner(model, task, config, mesh, d.max_sample_size, d.batch_size)
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
      seed=config.train.seed, start_step=start, normalize=d.normalize, drop_longer=task == "asr")
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
      for k in ("loss", "accuracy", "learning_rate"):
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
  writer.write(f_cfg.num_steps, {k: v for k, v in results.items() if isinstance(v, float)},
               prefix="test")
  writer.close()
  results.update(task=task, init=config.init, init_source=loaded.source, steps=f_cfg.num_steps,
                 mode=f_cfg.mode)
  export_dir = os.path.join(workdir, "model")
  params = jax.tree.map(np.asarray, unbox(jax.device_get(state.params)))
  metadata = {"task": task, "init": config.init}
  if task != "asr":
    metadata["class_names"] = list(label_info)
  model_files.save_model(export_dir, params, model.config, metadata)
  if task == "asr":
    label_info.save(export_dir)
  try:
    from xlsr_jax.downstream import reports
    report = reports.write_report(os.path.join(workdir, "report"), task, results,
                                  curves=curves or None, **report_kwargs)
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
  for batch in batches:
    keep = batch["example_valid"]
    out = jax.device_get(tuner.evaluate(state, {k: batch[k] for k in (
        "waveform", "padding_mask", "example_valid", *(("labels", "label_valid")
                                                      if config.task == "asr" else ("label",)))}))
    outputs.append(({k: np.asarray(v)[keep] for k, v in out.items()},
                    {k: v[keep] for k, v in batch.items()}))
    seen += int(keep.sum())
    print(f"[eval] {seen}/{len(index)} utterances ({time.perf_counter() - start:.0f} s)", flush=True)
  if config.task == "asr":
    vocab = label_info
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
  from xlsr_jax.downstream.vocabulary import VocabularyError
  try:
    run(config, workdir)
  except (InitError, VocabularyError, TaskError, ConversionError, CheckpointFileError,
          UnsafeCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
