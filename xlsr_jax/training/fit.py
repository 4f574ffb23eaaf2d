"""One training loop for every job: pretraining (`training.loop`) and downstream fine-tuning
(`downstream.evaluation_run`) both call `fit` on the run skeleton (`training.run`); what a job adds
(evaluation, per-language evaluation, its history file, accounting, a report at the end) attaches
as hooks, so a new job adds hooks, not a second loop.

  state, data_state = run.restore_or_init(manager, trainer.abstract_state,
                                          trainer.state_sharding, create)
  fitted = fit(trainer, state, batches, manager, writer, num_steps=..., log_every=...,
               hooks=[...], data_state=train_iter.get_state)

The loop owns the step count (from the restored step), the log cadence (one device_get per
interval), the train lines of the metric writer, the history of what was logged, and the save /
preemption check after every step (`preemption.Watcher`: SIGTERM, a first Ctrl-C).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from data_pipelines import device_feed
from xlsr_jax.training import metric_writer as metrics_lib
from xlsr_jax.training import preemption, run


class StepOwner(Protocol):
  """What `fit` needs of a job's trainer: `training.state.Trainer` (pretraining) and
  `downstream.finetune.Finetuner` are both one."""
  mesh: Mesh
  abstract_state: Any  # the state's ShapeDtypeStructs: what a checkpoint restores onto
  state_sharding: Any  # their NamedShardings
  batch_spec: PartitionSpec  # how the rows of a global batch split over the mesh
  create_state: Callable[..., Any]  # the initial state on the mesh
  step: Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]  # jitted


class Hook:
  """A job's part in `fit`: each method is called at its point of the loop, and does nothing here.
  `every`: `on_eval` runs after every `every`-th step and after the last (0: never)."""
  every: int = 0

  def on_step(self, done: int, rows: dict[str, np.ndarray]) -> None:
    """After step `done` ran on this process's host rows."""

  def on_log(self, done: int, interval: run.Interval, values: dict[str, float]
             ) -> Exception | None:
    """At a log step, before `values` (the interval's mean metrics and steps_per_second) are
    written: a hook may add to them. An exception returned ends the run: the loop writes this log
    step, waits for the pending save and raises it."""
    return None

  def on_eval(self, done: int, state: Any, writer: metrics_lib.MetricWriter) -> list[dict]:
    """Evaluates `state` after step `done`, writes what it found; returns rows for the history."""
    return []

  def on_save(self, done: int, history: list[dict]) -> None:
    """After the checkpoint of step `done` was started (a history file kept with it)."""

  def on_end(self, state: Any, history: list[dict]) -> None:
    """After the last step, or the step a preemption saved; the checkpoints are closed."""


class Evaluation(Hook):
  """`evaluate(state)` -> mean metrics, every `every` steps: <prefix>/<name> in TensorBoard and the
  progress line, <prefix>_<name> in the history."""

  def __init__(self, every: int, evaluate: Callable[[Any], dict[str, float]], prefix: str = "eval"):
    self.every, self.evaluate, self.prefix = every, evaluate, prefix

  def on_eval(self, done: int, state: Any, writer: metrics_lib.MetricWriter) -> list[dict]:
    metrics = self.evaluate(state)
    writer.write(done, metrics, prefix=self.prefix)
    return [dict(step=done, **{f"{self.prefix}_{k}": v for k, v in metrics.items()})]


@dataclasses.dataclass
class Fitted:
  """What `fit` ends with."""
  state: Any
  history: list[dict]  # this segment's rows: {"step": n, name: value}, train then eval, in order
  last: dict[str, float]  # the last logged train values ({} when nothing was logged)
  preempted: bool  # stopped early: a SIGTERM / Ctrl-C / preemption point, its step saved


def fit(trainer: StepOwner, state: Any, batches: Iterator[dict[str, np.ndarray]], manager,
        writer: metrics_lib.MetricWriter, *, num_steps: int, log_every: int,
        hooks: Sequence[Hook] = (), data_state: Callable[[], bytes] | None = None) -> Fitted:
  """Trains `state` from its step to `num_steps` on `batches` (this process's host rows, put on
  the mesh with trainer.batch_spec): logs every `log_every` steps and the last, saves on the
  checkpoint cadence and the last step (with `data_state()`, the input position), stops after
  saving when preempted. Closes `manager` (waiting for the last save), then calls the hooks'
  on_end; `writer` stays open (the job may write more)."""
  log = run.LogCadence(log_every, num_steps, int(state.step))
  history: list[dict] = []
  last: dict[str, float] = {}
  preempted = False

  def saved(done: int) -> None:
    for hook in hooks:
      hook.on_save(done, history)

  with preemption.Watcher() as watcher:
    for step in range(int(state.step), num_steps):
      rows = next(batches)
      batch = device_feed.global_batch(rows, trainer.mesh, trainer.batch_spec)
      state, step_metrics = trainer.step(state, batch)
      done = step + 1
      for hook in hooks:
        hook.on_step(done, rows)
      if (interval := log.add(done, step_metrics)) is not None:
        last = dict(interval.mean(), steps_per_second=interval.steps_per_second)
        errors = [e for hook in hooks if (e := hook.on_log(done, interval, last)) is not None]
        writer.write(done, last)
        history.append(dict(step=done, **last))
        if errors:
          manager.wait_until_finished()
          raise errors[0]
      for hook in hooks:
        if hook.every and (done % hook.every == 0 or done == num_steps):
          history += hook.on_eval(done, state, writer)
      preempted = run.save_or_stop(manager, watcher, done, state, last=done == num_steps,
                                   data_state=data_state, on_save=lambda: saved(done))
      if preempted:
        break
  run.close(manager)
  for hook in hooks:
    hook.on_end(state, history)
  return Fitted(state, history, last, preempted)
