"""What every run does, pretraining (`training.loop`) and downstream fine-tuning
(`downstream.evaluation_run`) alike: the mesh from the config, the state's shapes and shardings from its
init function, jitted steps called under the mesh, restore or init, the logging cadence, and the
checkpoint / preemption check after each step. `training.fit` is the loop made of these:

  mesh = run.make_mesh(config)
  abstract, shardings = run.abstract_state(init_fn, mesh, rules)       # shapes only
  train = run.jit_train_step(step_fn, mesh, shardings, batch_sharding)  # (state, batch) -> ...
  manager = run.open_checkpoints(workdir, config.train)
  state, data_state = run.restore_or_init(manager, abstract, shardings, create)
  log = run.LogCadence(config.train.log_every, num_steps, start_step)
  with preemption.Watcher() as watcher:                                 # SIGTERM, Ctrl-C
    for step in ...:
      state, metrics = train(state, batch)
      if (interval := log.add(step + 1, metrics)) is not None: ...      # one device_get
      if run.save_or_stop(manager, watcher, step + 1, state, last=...): break  # preempted
  run.close(manager)
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xlsr_jax.models.params import unbox
from xlsr_jax.sharding import mesh as mesh_lib
from xlsr_jax.training import metric_writer as metrics_lib
from xlsr_jax.training import preemption


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The (data, fsdp, tensor) mesh of config.mesh."""
  m = config.mesh
  return mesh_lib.make_mesh(m.data, m.fsdp, m.tensor, dcn_data=m.dcn_data)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: tuple) -> Any:
  """NamedShardings for every leaf of a (boxed) abstract state, following the logical rules."""
  specs = nn.get_partition_spec(abstract_state)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def abstract_state(init_fn: Callable[[], Any], mesh: Mesh, rules: tuple) -> tuple[Any, Any]:
  """(ShapeDtypeStructs of `init_fn()`, their NamedShardings): no memory is allocated. The
  shardings are read from the boxes' logical axis names; the state is unboxed right after (as
  `jit_init` makes it), so the steps, checkpoints and init see plain arrays."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn)
  return unbox(boxed), state_shardings(boxed, mesh, rules)


def jit_init(init_fn: Callable[..., Any], mesh: Mesh, state_sharding: Any) -> "InMesh":
  """(*args) -> `init_fn(*args)` unboxed, made on the mesh with `state_sharding`."""
  return InMesh(jax.jit(lambda *args: unbox(init_fn(*args)), out_shardings=state_sharding), mesh)


class InMesh:
  """A jitted function called under `mesh` (the ambient mesh that attention and the loss's
  shard_map read); `.jitted` is the jax.jit object (for `.lower`, the compile cache)."""

  def __init__(self, jitted: Callable, mesh: Mesh):
    self.jitted, self.mesh = jitted, mesh

  def __call__(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted(*args)


def jit_train_step(step_fn: Callable, mesh: Mesh, state_sharding: Any, batch_sharding: Any
                   ) -> InMesh:
  """(state, batch) -> (state, metrics): the state stays sharded and is donated, metrics come
  back replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return InMesh(jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                        out_shardings=(state_sharding, replicated), donate_argnums=0), mesh)


def jit_eval_step(eval_fn: Callable, mesh: Mesh, state_sharding: Any, batch_sharding: Any,
                  num_replicated_args: int = 0) -> InMesh:
  """(state, batch, *replicated args) -> replicated outputs (every process can read them)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = (state_sharding, batch_sharding) + (replicated,) * num_replicated_args
  return InMesh(jax.jit(eval_fn, in_shardings=shardings, out_shardings=replicated), mesh)


def open_checkpoints(workdir: str, train: ml_collections.ConfigDict):
  """The run's CheckpointManager in workdir/checkpoints (train.checkpoint_every, keep_checkpoints)."""
  from xlsr_jax.checkpoints.manager import CheckpointManager
  return CheckpointManager(os.path.join(workdir, "checkpoints"), save_every=train.checkpoint_every,
                           keep=train.keep_checkpoints)


def restore_or_init(manager, abstract: Any, shardings: Any, create: Callable[[], Any], *,
                    resumed_note: str = "") -> tuple[Any, bytes | None]:
  """(state, this process's saved input position or None): the newest good checkpoint, or
  `create()` when there is none. A refused resume or init (mismatch, damage, a bad init source)
  closes the manager, so the error leaves no Orbax threads behind, and re-raises. `resumed_note` ends the "resumed from" line."""
  from xlsr_jax.checkpoints.manager import restore_target
  try:
    restored = manager.restore_latest(restore_target(abstract, shardings))
    if restored is None:
      logging.info("initialised a new state")
      return create(), None
  except BaseException:
    manager.close()
    raise
  state, data_state = restored
  print(f"resumed from step {int(state.step)} in {manager.directory}{resumed_note}", flush=True)
  return state, data_state


ERRORS_LOG = "errors.log"
# Loggers of the libraries that report from background threads (Orbax's asynchronous save, asyncio
# tasks it leaves behind): their ERROR records are written to ERRORS_LOG, not the console.
BACKGROUND_LOGGERS = ("absl", "orbax", "asyncio", "tensorstore")


class _Background(logging.Filter):
  """Passes the ERROR (and worse) records of BACKGROUND_LOGGERS only (or all others: `invert`)."""

  def __init__(self, invert: bool = False):
    super().__init__()
    self.invert = invert

  def filter(self, record: logging.LogRecord) -> bool:
    background = (record.levelno >= logging.ERROR
                  and record.name.split(".")[0] in BACKGROUND_LOGGERS)
    return background != self.invert


class _QuietFileHandler(logging.FileHandler):
  """A FileHandler that drops a record it cannot write (the disk the log is on may be the full one)
  instead of printing logging's own traceback to the console."""

  def handleError(self, record: logging.LogRecord) -> None:
    del record


@contextlib.contextmanager
def background_errors_to_log(workdir: str, keep: bool = False) -> Iterator[str]:
  """Sends the tracebacks of background threads to workdir/errors.log instead of the console: the
  ERROR records of BACKGROUND_LOGGERS, uncaught exceptions of other threads (threading.excepthook),
  those printed from native threads (sys.excepthook off the main thread) and unraisable ones
  (sys.unraisablehook: callbacks after asyncio's loop closed), so that a failed save or a second
  Ctrl-C ends the console output with one line. The file is created on the first record only; a
  record it cannot write (a full disk) is dropped. Yields its path (the run's last error line
  points at it). keep: stay diverted after the block (a CLI process: Orbax's leftover tasks report
  while the interpreter exits)."""
  import sys
  import threading
  import traceback
  path = os.path.join(workdir, ERRORS_LOG)
  handler = _QuietFileHandler(path, delay=True)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  handler.addFilter(_Background())
  root = logging.getLogger()
  console_filter = _Background(invert=True)
  consoles = list(root.handlers)
  for console in consoles:
    console.addFilter(console_filter)
  root.addHandler(handler)
  to_file = logging.getLogger("orbax.background")  # an ERROR of a BACKGROUND_LOGGERS name

  def thread_hook(args):
    to_file.error("uncaught in thread %s:\n%s", getattr(args.thread, "name", "?"),
                  "".join(traceback.format_exception(args.exc_type, args.exc_value,
                                                     args.exc_traceback)))

  def excepthook(exc_type, exc_value, tb):
    if threading.current_thread() is threading.main_thread():
      previous[0](exc_type, exc_value, tb)
      return
    to_file.error("from a native thread:\n%s",
                  "".join(traceback.format_exception(exc_type, exc_value, tb)))
  def unraisable_hook(unraisable):  # e.g. a native thread's callback after asyncio's loop closed
    to_file.error("unraisable%s:\n%s", f" in {unraisable.object!r}" if unraisable.object else "",
                  "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                                     unraisable.exc_traceback)))
  previous = sys.excepthook, threading.excepthook, sys.unraisablehook
  sys.excepthook, threading.excepthook, sys.unraisablehook = excepthook, thread_hook, unraisable_hook
  try:
    yield path
  finally:
    if not keep:
      sys.excepthook, threading.excepthook, sys.unraisablehook = previous
      root.removeHandler(handler)
      handler.close()
      for console in consoles:
        console.removeFilter(console_filter)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """workdir/config.json (process 0); call it once the resume checks passed, so a refused resume
  leaves the workdir as it was."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


@dataclasses.dataclass
class Interval:
  """One log interval: the host metrics of each step (one device_get for all of them), and the
  speed since the previous interval (wall seconds, and this process's CPU seconds, all threads)."""
  rows: list[dict[str, np.ndarray]]
  steps_per_second: float
  seconds: float
  cpu_seconds: float = 0.0

  def mean(self) -> dict[str, float]:
    """Every metric averaged over the interval's steps."""
    return {k: float(np.mean([r[k] for r in self.rows])) for k in self.rows[-1]}


class LogCadence:
  """Keeps each step's (device) metrics until a log step: every `log_every` steps and the last."""

  def __init__(self, log_every: int, num_steps: int, start_step: int):
    self.log_every, self.num_steps = log_every, num_steps
    self.throughput = metrics_lib.Throughput(start_step)
    self.pending: list[dict] = []

  def add(self, done: int, metrics: dict) -> Interval | None:
    """Records step `done`'s metrics; at a log step returns the interval (and starts a new one)."""
    self.pending.append(metrics)
    if done % self.log_every and done != self.num_steps:
      return None
    rows, self.pending = jax.device_get(self.pending), []
    return Interval(rows, *self.throughput.update(done))


def save_or_stop(manager, watcher: preemption.Watcher, done: int, state: Any, *, last: bool,
                 data_state: Callable[[], bytes] | None = None,
                 on_save: Callable[[], None] | None = None) -> bool:
  """After step `done`: saves on the checkpoint cadence, at the last step or when preempted
  (`watcher`: SIGTERM, a first Ctrl-C, jax's preemption sync point), then calls `on_save`. True
  when preempted: the checkpoint is written and the run must stop. A failed asynchronous save
  raises CheckpointSaveError here, at the step after it failed."""
  manager.check_for_errors()
  preempted = watcher.reached(done)  # a sync point under jax.distributed: every step
  if manager.should_save(done, last=last) or preempted:
    manager.save(done, state, None if data_state is None else data_state(),
                 force=last or preempted)
    if on_save is not None:
      on_save()
  if preempted:
    manager.wait_until_finished()
    print(f"preempted: saved step {done}; exiting", flush=True)
  return preempted


def close(manager) -> None:
  """Waits for the last asynchronous save, then releases the manager."""
  manager.wait_until_finished()
  manager.close()
