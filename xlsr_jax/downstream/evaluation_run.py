"""Downstream evaluation of an encoder: fine-tune (or probe) on a task, score the test split, report.

  python -m xlsr_jax.evaluate --config=experiments/downstream/<asr|lid|sid|ast>.py \
      --config.init=<export dir | HF dir | fairseq .pt | random> --workdir=DIR [--config.a.b=v ...]

Top to bottom: config -> data index (labels, vocabulary) -> encoder -> model (`task_setup`; what
differs between tasks is the task object's, `downstream.tasks.TASKS[config.task]`) ->
mesh, jitted step, restore or init, train on the run skeleton shared with pretraining
(`training.run`: progress line, TensorBoard, Orbax checkpoints, preemption; re-running the same
command resumes) -> test split -> metrics.json, report.md + plots, the fine-tuned model in
DIR/model (model_files layout, with vocab.json for ASR) (`scoring`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import ml_collections

from xlsr_jax.cli import start_cli
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.downstream import scoring
from xlsr_jax.downstream.task_setup import (TaskData, TaskError, build_task, load_init,
                                            parse_config, read_task_data)
from xlsr_jax.training import fit


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tune / probe, evaluate the test split, write the report; returns the metrics."""
  from xlsr_jax.downstream import finetune
  from xlsr_jax.downstream.tasks import task_for
  from xlsr_jax.training import run as run_lib
  workdir = os.path.abspath(workdir)
  task, d = task_for(config), config.data
  data = read_task_data(task, config)
  loaded = load_init(config)
  model, loaded_parts, labeler, label_info = build_task(task, config, loaded, data.train_index)
  task.check_data(config, data, label_info, labeler)
  print(f"{config.task}: init={config.init} ({loaded.source}), {len(data.train_index)} train / "
        f"{len(data.test_index)} test utterances, mode={config.finetune.mode}"
        + task.run_line(config), flush=True)
  if task.fits_without_steps(config):
    return task.fit_without_steps(config, workdir, data, loaded, model, labeler, label_info)

  mesh = run_lib.make_mesh(config)
  tuner = finetune.Finetuner(model, task, config, mesh, d.max_sample_size, d.batch_size)
  state, curves, writer, preempted = train(config, workdir, tuner, loaded_parts, data, labeler,
                                           label_info)
  if preempted:
    writer.close()
    return {"task": config.task, "preempted_at": int(state.step)}
  results, report_kwargs = scoring.evaluate_split(tuner, state, data.builder, data.test_names,
                                                  data.test_index, labeler, label_info, config)
  task.add_results(results, config, data, label_info, labeler, loaded, workdir)
  writer.write(config.finetune.num_steps,
               {k: v for k, v in results.items() if isinstance(v, float)}, prefix="test")
  writer.close()
  export_dir = scoring.export_model(os.path.join(workdir, "model"), task, state, model, config,
                                    label_info)
  report = scoring.write_report(workdir, task, results, curves, report_kwargs, config)
  print(f"report: {report}\nmetrics: {os.path.join(workdir, 'metrics.json')}\n"
        f"model: {export_dir}\nTensorBoard: {writer.log_dir}", flush=True)
  return results


class TrainHistory(fit.Hook):
  """workdir/train_history.json: {"train_<name>": [(step, value), ...]} of the loss (accuracy, nll,
  learning rate) at each log step, kept across resumes (written with every checkpoint); the
  report draws these curves."""
  KEYS = ("loss", "accuracy", "nll", "learning_rate")

  def __init__(self, workdir: str, start_step: int):
    self.path = os.path.join(workdir, "train_history.json")
    self.curves: dict[str, list[tuple[int, float]]] = {}
    if start_step and os.path.exists(self.path):
      with open(self.path) as fh:
        self.curves = {k: [tuple(p) for p in v] for k, v in json.load(fh).items()}

  def on_log(self, done: int, interval, values: dict[str, float]) -> None:
    for k in self.KEYS:
      if k in values:
        self.curves.setdefault(f"train_{k}", []).append((done, values[k]))

  def on_save(self, done: int, history: list[dict]) -> None:
    if jax.process_index() == 0:
      with open(self.path, "w") as fh:
        json.dump(self.curves, fh)


def train(config: ml_collections.ConfigDict, workdir: str, tuner, loaded_parts: dict,
          data: TaskData, labeler, label_info):
  """Fine-tunes to finetune.num_steps with `training.fit`, resuming from workdir's checkpoints:
  (state, loss curves, the metric writer (open: the test split's scalars follow), preempted)."""
  from data_pipelines import device_feed
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.training import metric_writer as metrics_lib
  from xlsr_jax.training import run as run_lib
  d, num_steps = config.data, config.finetune.num_steps
  manager = run_lib.open_checkpoints(workdir, config.train)
  state, _ = run_lib.restore_or_init(manager, tuner.abstract_state, tuner.state_sharding,
                                     lambda: tuner.create_state(loaded_parts))
  run_lib.write_config(workdir, config)
  start = int(state.step)
  train_iter = data_lib.train_iterator(
      data.builder, data.train_names, labeler, batch_size=d.batch_size,
      max_samples=d.max_sample_size, seed=config.train.seed, start_step=start,
      normalize=d.normalize, drop_longer=tuner.task.drop_longer,
      keep_ids=tuner.task.keep_ids(label_info))
  writer = metrics_lib.MetricWriter(workdir, num_steps)
  history = TrainHistory(workdir, start)
  fitted = fit.fit(tuner, state, map(device_feed.process_rows, train_iter), manager, writer,
                   num_steps=num_steps, log_every=config.train.log_every, hooks=[history])
  return fitted.state, history.curves, writer, fitted.preempted


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog="python -m xlsr_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", metavar="FILE", help="task config file (required), e.g. "
                      "experiments/downstream/lid.py; then --config.<section>.<key>=VALUE overrides "
                      "any key of xlsr_jax/downstream/task_config_defaults.py (--config.init=INIT: the encoder)")
  parser.add_argument("--workdir", default="", help="run directory (default workdir/downstream/<task>)")
  started = start_cli(argv, parser, parse_config)
  if isinstance(started, int):
    return started
  config, args = started
  workdir = args.workdir or os.path.join("workdir", "downstream", config.task)
  from xlsr_jax.training.workdir_lock import WorkdirUnusable, check_workdir
  try:
    check_workdir(workdir)
  except WorkdirUnusable as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from xlsr_jax.checkpoints import manager
  from xlsr_jax.checkpoints.hf_layout import ConversionError
  from xlsr_jax.checkpoints.safe_pickle import CheckpointFileError, UnsafeCheckpointError
  from xlsr_jax.downstream.encoders import InitError
  from xlsr_jax.downstream.linear_probe import ProbeError
  from xlsr_jax.downstream.vocabulary import VocabularyError
  try:
    run(config, workdir)
  except (InitError, VocabularyError, TaskError, ProbeError, ConversionError, CheckpointFileError,
          UnsafeCheckpointError, ConfigError, manager.CheckpointMismatchError,
          manager.NoIntactCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (manager.CheckpointReadError, manager.CheckpointSaveError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
