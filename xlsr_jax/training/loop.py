"""The pretraining loop, top to bottom: mesh, data, trainer, restore or init, train, eval, save, export."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines import device_feed, input_pipeline
from xlsr_jax.config_loading import ConfigError, model_config_from
from xlsr_jax.training import metric_writer as metrics_lib
from xlsr_jax.training import fit, init_from, language_metrics, metrics_file, run
from xlsr_jax.training.batch_size import (batch_multiple, bucket_spec, global_batch_rows,
                                           largest_crop)
from xlsr_jax.training.state import build_trainer
from xlsr_jax.training.step_accounting import StepAccounting
from data_pipelines.features import SAMPLE_RATE

FEED_KEYS = ("waveform", "lengths")  # what the step reads of a pipeline batch


def pipeline_config(config: ml_collections.ConfigDict, split: str, seed_offset: int = 0,
                    multiple: int = 1) -> input_pipeline.PipelineConfig:
  d = config.data
  spec = bucket_spec(config, multiple)
  return input_pipeline.PipelineConfig(
      data_dir=os.path.expanduser(d.data_dir),
      sources=_sources(d.sources), replay_fraction=d.replay_fraction,
      replay_sources=_sources(d.replay_sources) if d.replay_fraction else (),  # 0: not read
      split=split, alpha=d.alpha, max_sample_size=d.max_sample_size,
      min_sample_size=d.min_sample_size, normalize=d.normalize,
      global_batch_size=spec.batch_sizes[-1] if spec else global_batch_rows(config),
      seed=config.train.seed + seed_offset,
      shuffle_files=d.shuffle_files, interleave_cycle_length=d.interleave_cycle_length,
      prefetch_batches=d.prefetch_batches,
      bucket_lengths=spec.lengths if spec else (), bucket_batch_sizes=spec.batch_sizes if spec else (),
      bucket_mode=d.bucket_mode)


def _sources(pairs) -> tuple:
  """[[corpus, languages or None], ...] from the config -> PipelineConfig's tuples."""
  return tuple((c, None if langs is None else tuple(langs)) for c, langs in pairs)


def ensure_synthetic_corpus(config: ml_collections.ConfigDict) -> None:
  """Builds synthetic_speech/<config> into data.data_dir when a source names it and it is missing;
  ConfigError naming the build command when it is missing and data.build_if_missing is off."""
  import tensorflow_datasets as tfds
  from data_pipelines.synthetic_speech import corpus_builder, not_built_message
  data_dir = os.path.expanduser(config.data.data_dir)
  for corpus, _ in list(config.data.sources) + list(config.data.replay_sources):
    if corpus.partition("/")[0] != "synthetic_speech":
      continue
    try:
      builder = corpus_builder(corpus, data_dir)
    except ValueError:  # an unknown builder config: TFDS lists near names over several lines
      from data_pipelines.synthetic_speech import SyntheticSpeech
      raise ConfigError(f"data.sources or replay_sources name {corpus!r}, but synthetic_speech has "
                        f"no such config; "
                        f"its configs: {', '.join(c.name for c in SyntheticSpeech.BUILDER_CONFIGS)}"
                        ) from None
    if builder.is_prepared():
      continue
    if not config.data.build_if_missing:
      raise ConfigError(not_built_message(corpus, data_dir))
    if jax.process_index() == 0:
      logging.info("building %s into %s", corpus, data_dir)
      start = time.perf_counter()
      tfds.disable_progress_bar()
      builder.download_and_prepare()
      print(f"built {corpus} in {time.perf_counter() - start:.0f} s into {data_dir}", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("synthetic_corpus_built")


def check_corpora(config: ml_collections.ConfigDict) -> None:
  """ConfigError (one line) for a data.sources / data.replay_sources corpus that is neither built in
  data.data_dir nor a TFDS dataset, instead of TFDS's list of every dataset it knows."""
  import tensorflow_datasets as tfds
  data_dir = os.path.expanduser(config.data.data_dir)
  for key in ("sources", "replay_sources"):
    for corpus, _ in config.data[key]:
      try:
        tfds.builder(corpus, data_dir=data_dir)
      except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(
            f"data.{key} names the corpus {corpus!r}, which is neither built in data.data_dir="
            f"{config.data.data_dir} (built there: {', '.join(built_corpora(data_dir)) or 'none'}) "
            f"nor a TFDS dataset: fix the name or build it first (python -m data_pipelines.corpora "
            f"--help)") from None


def built_corpora(data_dir: str) -> list[str]:
  """The name[/config] of every TFDS dataset prepared in `data_dir` (a version directory with a
  dataset_info.json)."""
  found = []
  for root, dirs, files in os.walk(data_dir):
    if "dataset_info.json" in files:
      found.append(os.path.dirname(os.path.relpath(root, data_dir)))
    if "dataset_info.json" in files or os.path.relpath(root, data_dir).count(os.sep) >= 2:
      dirs[:] = []  # name/config/version at most
  return sorted(set(found))[:20]


make_mesh_from_config = run.make_mesh


def device_peak_flops(config) -> float | None:
  """Peak FLOP/s of one device for MFU; None (no MFU logged) for a kind with no known figure."""
  from xlsr_jax.training import devices
  try:
    return devices.peak_flops_per_device(jax.devices()[0].device_kind,
                                         config.train.peak_tflops_per_device)
  except KeyError as e:
    logging.warning("%s", e)
    return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs pretraining to config.train.num_steps, resuming from workdir's latest checkpoint."""
  workdir = os.path.abspath(workdir)
  model_config_from(config)  # validates model fields before anything expensive
  mesh = run.make_mesh(config)
  multiple = data_multiple(config, mesh)
  ensure_synthetic_corpus(config)
  check_corpora(config)
  train_config = pipeline_config(config, config.data.split, multiple=multiple)
  train_iter = input_pipeline.make_pretraining_iterator(
      train_config, process_index=jax.process_index(), process_count=jax.process_count())
  buckets = report_buckets(train_config) if train_config.bucket_lengths else None
  trainer = build_trainer(config, mesh, largest_crop(config))
  manager = run.open_checkpoints(workdir, config.train)
  state, data_state = run.restore_or_init(  # a new run: random weights, or train.init_from's
      manager, trainer.abstract_state, trainer.state_sharding,
      lambda: init_from.initial_state(trainer, config),
      resumed_note=" (train.init_from is for a new run: not loaded)" if config.train.init_from
      else "")
  num_steps = config.train.num_steps
  try:  # the resume checks: a refused resume leaves the workdir as it was
    check_num_steps(int(state.step), num_steps, workdir)
    if data_state is not None:
      resume_input_position(train_iter, data_state, config, int(state.step))
  except BaseException:
    manager.close()
    raise
  if int(state.step) == num_steps:  # nothing to train: the workdir is left as it was
    run.close(manager)
    return {"state": state, "history": [], "last": {}, "workdir": workdir, "tensorboard": None,
            "trained": False}
  if buckets is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, "bucket_plan.json"), "w") as f:
      json.dump(buckets, f, indent=1)
  run.write_config(workdir, config)

  writer = metrics_lib.MetricWriter(workdir, num_steps)
  eval_cache: list = []  # the validation batches, read once (the same batches at every eval)
  language_cache: dict = {}  # the same for each language alone (train.eval_language_batches)
  hooks = [PretrainingLog(trainer.objective, config, manager.directory),
           metrics_file.History(workdir, int(state.step))]
  if config.train.eval_every:
    hooks.append(fit.Evaluation(config.train.eval_every,
                                lambda s: evaluate(trainer, s, config, mesh, eval_cache)))
  if config.train.eval_language_batches:
    hooks.append(language_metrics.LanguageEvaluation(
        config.train.eval_every,
        lambda s: evaluate_languages(trainer, s, config, mesh, language_cache), workdir))
  fitted = fit.fit(trainer, state, map(_feed, train_iter), manager, writer, num_steps=num_steps,
                   log_every=config.train.log_every, hooks=hooks, data_state=train_iter.get_state)
  writer.close()
  return {"state": fitted.state, "history": fitted.history, "last": fitted.last,
          "workdir": workdir, "tensorboard": writer.log_dir, "trained": True}


class PretrainingLog(fit.Hook):
  """What a pretraining log step adds to the interval's means: skipped steps summed, the real-audio,
  FLOPs / MFU and bucket accounting of the batches (StepAccounting), audio hours seen; ends the run
  (FloatingPointError) when train.max_nonfinite_steps consecutive steps were not finite."""

  def __init__(self, objective, config: ml_collections.ConfigDict, checkpoint_dir):
    self.accounting = StepAccounting(objective, device_peak_flops(config), jax.device_count(),
                                     jax.process_count())
    self.batch_seconds = config.data.batch_seconds
    self.max_nonfinite_steps, self.checkpoint_dir = config.train.max_nonfinite_steps, checkpoint_dir
    self.real_seconds_seen = 0.0  # this segment's real audio (a resumed run counts from its restart)

  def on_step(self, done: int, rows: dict[str, np.ndarray]) -> None:
    self.accounting.add(rows["lengths"], rows["waveform"].shape[1])

  def on_log(self, done: int, interval: run.Interval, values: dict[str, float]
             ) -> Exception | None:
    values["skipped_nonfinite"] = float(sum(m["skipped_nonfinite"] for m in interval.rows))
    values["real_frames_per_step"] = values.pop("real_frames")
    values.update(self.accounting.flush(interval.seconds))
    # Process CPU (all threads: step, input pipeline, logging), e.g. real audio per CPU second on CPU.
    values["cpu_seconds_per_step"] = interval.cpu_seconds / max(len(interval.rows), 1)
    values["hours_seen"] = done * self.batch_seconds / 3600  # nominal: steps x batch_seconds
    self.real_seconds_seen += values["real_audio_seconds_per_step"] * len(interval.rows)
    values["real_hours_seen_this_run"] = self.real_seconds_seen / 3600
    if values.get("stop_nonfinite", 0) > 0:
      return FloatingPointError(
          f"{self.max_nonfinite_steps} consecutive steps had a NaN/Inf loss or gradient at step "
          f"{done} (total skipped {int(values['total_nonfinite'])}); the last good checkpoint is "
          f"in {self.checkpoint_dir}")
    return None


def check_num_steps(start: int, num_steps: int, workdir: str) -> None:
  """After the restore: ConfigError when the checkpoint is past train.num_steps; a note when the
  run is already there (nothing to train). Either way the workdir is not touched."""
  if start > num_steps:
    raise ConfigError(f"train.num_steps={num_steps} is below the latest checkpoint, step {start}, "
                      f"in {workdir}: nothing was trained or changed; to train further set "
                      f"--config.train.num_steps above {start}, or use another --workdir for a new "
                      f"run")
  if start == num_steps:
    print(f"nothing to train: {workdir} is already at step {start} = train.num_steps, nothing was "
          f"changed; to train further raise --config.train.num_steps; to export it: "
          f"python -m xlsr_jax.export --workdir={workdir} --out=OUT", flush=True)


class InputStreamChanged(ConfigError):
  """A resume whose batch stream (batch size, bucket plan, sources, ...) differs from the one the
  checkpoint's input position was saved for; the message names data.restart_input_stream."""


def resume_input_position(train_iter, data_state: bytes, config: ml_collections.ConfigDict,
                          step: int) -> None:
  """Moves the input pipeline to the checkpoint's position. A position saved for another stream is
  refused (InputStreamChanged), or with data.restart_input_stream the stream starts again from its
  beginning, with a warning."""
  from data_pipelines.pipeline_iterator import StreamMismatchError
  try:
    train_iter.set_state(data_state)
  except StreamMismatchError as e:
    changes = ", ".join(f"{k}: {saved} -> {now}" for k, (saved, now) in e.diff.items())
    if not config.data.restart_input_stream:
      raise InputStreamChanged(
          f"cannot resume at step {step}: the checkpoint's input position belongs to another batch "
          f"stream ({changes}); to continue this run with the new plan add "
          f"--config.data.restart_input_stream=true (the input stream starts again from its "
          f"beginning)") from None
    message = (f"data.restart_input_stream: the batch stream changed ({changes}); the input stream "
               f"starts again from its beginning at step {step} (utterances already trained on "
               f"come again first; the step count and learning-rate schedule go on from {step})")
    logging.warning("%s", message)
    print(f"warning: {message}", flush=True)


def data_multiple(config: ml_collections.ConfigDict, mesh) -> int:
  """What the global batch must be a multiple of (data x fsdp devices x grad_accum_steps, and the
  processes); without buckets the configured batch is checked against it here."""
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  multiple = batch_multiple(data_parallel, config.train.grad_accum_steps, jax.process_count())
  if not config.data.bucket_seconds:
    batch_size = global_batch_rows(config)
    if batch_size < 1:
      raise ConfigError(f"data.batch_seconds={config.data.batch_seconds} is less than one crop of "
                        f"{config.data.max_sample_size / SAMPLE_RATE} s")
    if batch_size % multiple:
      raise ConfigError(f"global batch {batch_size} (data.batch_seconds={config.data.batch_seconds})"
                        f" must divide over data x fsdp = {data_parallel} devices and "
                        f"{jax.process_count()} processes")
  return multiple


def report_buckets(pipeline: input_pipeline.PipelineConfig) -> dict[str, Any]:
  """Logs the bucket plan (rows, step shares, utterances dropped as too short) and returns it (the
  run writes it to workdir/bucket_plan.json once the resume checks passed), so nothing is dropped
  silently."""
  sources = input_pipeline.resolve_sources(pipeline)
  plan, _ = input_pipeline.plan_buckets(pipeline, sources, input_pipeline.load_builders(pipeline))
  summary = plan.summary()
  rows = ", ".join(f"{b['seconds']:g} s x {b['rows']} ({100 * b['step_probability']:.0f}% of steps)"
                   for b in summary["buckets"])
  total = summary["dropped_utterances"] + summary["kept_utterances"]
  print(f"buckets ({summary['mode']}): {rows}; dropped {summary['dropped_utterances']} of {total} "
        f"utterances as shorter than {pipeline.min_sample_size / SAMPLE_RATE:g} s or the shortest "
        f"bucket (by source in bucket_plan.json)", flush=True)
  return summary


def evaluate(trainer, state, config: ml_collections.ConfigDict, mesh,
             cache: list | None = None) -> dict[str, float]:
  """Mean validation metrics over config.train.eval_batches batches (fixed seed, argmax codes).

  cache: a list kept across calls; the first call fills it with the (host) validation batches so
  later evaluations skip building the pipeline (one tf.data source per language and bucket).
  """
  cache = [] if cache is None else cache
  if not cache:
    eval_iter = input_pipeline.make_pretraining_iterator(
        _eval_pipeline(config, mesh), process_index=jax.process_index(),
        process_count=jax.process_count())
    cache.extend(_feed(next(eval_iter)) for _ in range(config.train.eval_batches))
    eval_iter.close()
  return _mean_eval(trainer, state, mesh, cache)


def evaluate_languages(trainer, state, config: ml_collections.ConfigDict, mesh,
                       cache: dict) -> dict[str, dict[str, float]]:
  """{language: mean validation metrics over train.eval_language_batches batches of it alone}."""
  pipelines = language_metrics.language_pipelines(config, _eval_pipeline(config, mesh))
  return language_metrics.evaluate_languages(
      pipelines, config.train.eval_language_batches,
      lambda batches: _mean_eval(trainer, state, mesh, batches), cache, _feed)


def _eval_pipeline(config: ml_collections.ConfigDict, mesh) -> input_pipeline.PipelineConfig:
  multiple = batch_multiple(mesh.shape["data"] * mesh.shape["fsdp"],
                            config.train.grad_accum_steps, jax.process_count())
  return pipeline_config(config, config.data.eval_split, seed_offset=1, multiple=multiple)


def _mean_eval(trainer, state, mesh, batches: list) -> dict[str, float]:
  """Mean of the eval step's metrics over host batches (batch i scored with key 1000 + i)."""
  totals: dict[str, list[float]] = {}
  for i, local in enumerate(batches):
    batch = device_feed.global_batch(local, mesh, trainer.batch_spec)
    out = trainer.evaluate(state, batch, jax.random.key(1000 + i))
    for k, v in jax.device_get(out).items():
      totals.setdefault(k, []).append(float(v))
  return {k: float(np.mean(v)) for k, v in totals.items()}


def _feed(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The part of a pipeline batch the step reads (FEED_KEYS)."""
  return {k: local[k] for k in FEED_KEYS}
