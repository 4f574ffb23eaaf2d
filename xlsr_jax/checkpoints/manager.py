"""Training checkpoints: Orbax's v0 `CheckpointManager` (asynchronous) over the train state and input position.

Layout of `directory/<step>/`; every item is written into Orbax's temporary step directory and the
step becomes visible only when Orbax finalises it (rename after all processes committed), so a
half-written step is never listed or restored:
  params/       the unboxed parameters (StandardSave); `xlsr_jax.export` restores only this item
  train_state/  step, opt_state, rng (typed key, stored natively by Orbax), nonfinite counters
  data_state/   process_<i>.bin: sha256 + `PipelineIterator.get_state()` of process i, written by
                process i itself; processes.json: the number of processes (written by process 0).
                Absent when the step was saved without an input position.
Restoring goes through abstract targets (`jax.ShapeDtypeStruct` with the current mesh's shardings),
so a checkpoint saved on one mesh shape restores onto any other. A damaged step (see below) is
skipped with a WARNING naming the file and the previous one is tried; when every step is damaged
`NoIntactCheckpointError` lists them. Any other error reading a step (permissions, an I/O error, a
storage timeout, an out-of-memory) is not damage: it stops the restore with `CheckpointReadError`
naming the file and the error, and no step is skipped, deleted or replaced.

Integrity (`integrity.py`): `<step>/checksums.json` holds the sha256 of every item file, written into
the temporary step directory after Orbax finalised the items and before the rename that commits the
step. Restoring re-hashes them first (process 0) and refuses a step with a damaged file, or whose
restored values are not finite: a WARNING naming the file, then the previous step (a new save of
that step replaces it later). A step saved before checksums existed is damaged when Orbax reports
a file missing or truncated; any other error restoring it is a CheckpointReadError as above. A save that fails (disk
full, permissions) raises `CheckpointSaveError` naming the step and the cause at the next step of
the loop (`check_for_errors`), not one save later. When to save and stop on a signal is
`training.preemption`'s business, not this module's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from xlsr_jax.checkpoints import integrity
from xlsr_jax.checkpoints.integrity import CheckpointCorruptError, CheckpointReadError

logger = logging.getLogger(__name__)

PARAMS, TRAIN_STATE, DATA_STATE = "params", "train_state", "data_state"
_PROCESSES_FILE = "processes.json"


def _log(level: int, message: str, *args: Any) -> None:
  """Logs from process 0 only."""
  if jax.process_index() == 0:
    logger.log(level, message, *args)


def restore_target(abstract_state: Any, shardings: Any) -> Any:
  """Abstract state (`Trainer.abstract_state`: plain ShapeDtypeStructs) + its shardings
  (`Trainer.state_sharding`) -> ShapeDtypeStructs on that mesh."""
  def with_sharding(sharding, subtree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), subtree)
  return jax.tree.map(with_sharding, shardings, abstract_state)


# The input-pipeline position: one blob per process, each written by its own process.

@dataclasses.dataclass
class ProcessBytesSave(ocp.args.CheckpointArgs):
  blob: bytes


@dataclasses.dataclass
class ProcessBytesRestore(ocp.args.CheckpointArgs):
  pass


@dataclasses.dataclass(frozen=True)
class ProcessBytes:
  """This process's blob as read by `ProcessBytesHandler.restore`.

  blob is None when the step was saved by a different number of processes. A missing or corrupt
  file is reported in `problem` instead of raised, so every process finishes Orbax's restore (and
  its barrier) and the processes can agree on falling back together; `unreadable`: the problem is a
  read error (the file exists), not damage.
  """
  num_processes: int
  blob: bytes | None
  problem: str | None = None
  unreadable: bool = False


def _process_file(directory: epath.Path, index: int) -> epath.Path:
  return directory / f"process_{index}.bin"


class ProcessBytesHandler(ocp.AsyncCheckpointHandler):
  """Every process writes its own blob (sha256 digest + bytes); process 0 writes the process count."""

  @staticmethod
  def _write(directory: epath.Path, blob: bytes) -> None:
    index = jax.process_index()
    _process_file(directory, index).write_bytes(hashlib.sha256(blob).digest() + blob)
    if index == 0:
      (directory / _PROCESSES_FILE).write_text(json.dumps({"num_processes": jax.process_count()}))

  async def async_save(self, directory: epath.Path, args: ProcessBytesSave) -> list[ocp.Future]:
    blob = bytes(args.blob)

    async def write():  # runs once Orbax has created the temporary item directory
      self._write(directory, blob)

    return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="data_state_save")]

  def save(self, directory: epath.Path, args: ProcessBytesSave) -> None:
    self._write(directory, bytes(args.blob))

  def restore(self, directory: epath.Path, args: ProcessBytesRestore | None = None) -> ProcessBytes:
    try:
      count = json.loads((directory / _PROCESSES_FILE).read_text())["num_processes"]
    except (OSError, ValueError, KeyError) as e:
      return ProcessBytes(0, None, f"{directory / _PROCESSES_FILE}: {type(e).__name__}: {e}",
                          unreadable=_unreadable(e))
    if count != jax.process_count():
      return ProcessBytes(count, None)
    path = _process_file(directory, jax.process_index())
    try:
      stored = path.read_bytes()
    except OSError as e:
      return ProcessBytes(count, None, f"{path}: {type(e).__name__}: {e}", unreadable=_unreadable(e))
    digest, blob = stored[:32], stored[32:]
    if len(stored) < 32 or hashlib.sha256(blob).digest() != digest:
      return ProcessBytes(count, None, f"{path}: input pipeline state is corrupt "
                                       f"(sha256 mismatch, {len(stored)} bytes)")
    return ProcessBytes(count, blob)


def _unreadable(error: BaseException) -> bool:
  """An OSError other than a missing file: the file may be intact (permissions, I/O, timeout)."""
  return isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, NotADirectoryError))


# What TensorStore says of a missing or truncated file (its status codes, and zstd's own words).
_DAMAGE_WORDS = ("NOT_FOUND", "DATA_LOSS", "Truncated", "truncated")


def _names_damage(error: BaseException) -> bool:
  """Whether an exception (or one it was raised from) says a file is missing or truncated."""
  seen = 0
  while error is not None and seen < 10:
    if (isinstance(error, (FileNotFoundError, NotADirectoryError))
        or any(word in str(error) for word in _DAMAGE_WORDS)):
      return True
    error, seen = error.__cause__ or error.__context__, seen + 1
  return False


ocp.args.register_with_handler(ProcessBytesHandler, for_save=True)(ProcessBytesSave)
ocp.args.register_with_handler(ProcessBytesHandler, for_restore=True)(ProcessBytesRestore)


class CheckpointMismatchError(ValueError):
  """A checkpoint whose parameters do not have the shapes the current model expects (not corruption)."""


def check_shapes(stored: Any, params: Any, where: str) -> None:
  """Raises CheckpointMismatchError naming every parameter (tree path) of `stored` and `params`
  (trees of anything with .shape) that is missing from one of them or has another shape."""
  shapes = lambda tree: {jax.tree_util.keystr(path): tuple(x.shape)
                         for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  have, want = shapes(stored), shapes(params)
  problems = [f"{k}: missing from the checkpoint" for k in sorted(want.keys() - have.keys())]
  problems += [f"{k}: not in the model" for k in sorted(have.keys() - want.keys())]
  problems += [f"{k}: checkpoint {have[k]}, model {want[k]}"
               for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
  if problems:
    raise CheckpointMismatchError(f"{where} does not match the model ({len(problems)} "
                                  f"difference(s)): " + "; ".join(problems))


class NoIntactCheckpointError(RuntimeError):
  """Every step of the checkpoint directory is damaged: the run is refused (nothing is deleted)."""


class CheckpointSaveError(RuntimeError):
  """Saving a step failed (disk full, permissions, ...): the run must stop rather than go on unprotected."""


# What a process found restoring a step; every process learns every process's outcome.
_OK, _DAMAGED, _UNREADABLE, _UNVERIFIED = 0, 1, 2, 3  # _UNVERIFIED: intact, no checksum record


def _outcomes(here: int) -> list[int]:
  """Every process's outcome code (a collective when there are several)."""
  if jax.process_count() == 1:
    return [here]
  from jax.experimental import multihost_utils
  codes = multihost_utils.process_allgather(np.array([here], np.int32))
  return [int(c) for c in np.asarray(codes).reshape(-1)]


def _split(state: Any) -> tuple[Any, dict[str, Any]]:
  """TrainState -> (params, every other field by name)."""
  rest = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "params"}
  return state.params, rest


class CheckpointManager:
  """Saves every `save_every` steps (and on request), keeps the last `keep`, restores the newest good one.

  With `async_save` the arrays are copied to host before `save` returns and written in the
  background; the next save (or `wait_until_finished`) waits for the previous one. Create it after
  `jax.distributed.initialize`.
  """

  def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int,
               async_save: bool = True, read_only: bool = False):
    if save_every < 1 or keep < 1:
      raise ValueError(f"save_every and keep must be >= 1, got save_every={save_every}, keep={keep}")
    self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
    self.save_every, self.keep = save_every, keep
    self._async = async_save and not read_only
    self._saving_step: int | None = None
    self._damaged: set[int] = set()  # steps restore_latest skipped: a new save replaces them
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, preservation_policy=checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._record_checksums)
        if self._async else None)
    handlers = {PARAMS: ocp.StandardCheckpointHandler(), TRAIN_STATE: ocp.StandardCheckpointHandler(),
                DATA_STATE: ProcessBytesHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  # Saving.

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int, last: bool = False) -> bool:
    """Every `save_every` steps (not step 0) or at the last step, unless `step` is already saved."""
    due = last or (step > 0 and step % self.save_every == 0)
    return due and (step not in self._manager.all_steps() or step in self._damaged)

  def save(self, step: int, state: Any, data_state: bytes | None = None, force: bool = False) -> bool:
    """Starts saving `state` and this process's input position; False if skipped."""
    exists = step in self._manager.all_steps() and step not in self._damaged
    if exists or not (force or self.should_save(step)):
      return False
    params, rest = _split(state)
    items = {PARAMS: ocp.args.StandardSave(params), TRAIN_STATE: ocp.args.StandardSave(rest)}
    if data_state is not None:
      items[DATA_STATE] = ProcessBytesSave(data_state)
    self.wait_until_finished()  # a failure of the previous asynchronous save is reported as its own
    with self._save_errors(step):
      if step in self._damaged and step in self._manager.all_steps():
        _log(logging.WARNING, "replacing the damaged checkpoint %s", self.directory / str(step))
        self._manager.delete(step)
      self._damaged.discard(step)
      self._saving_step = step
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
      if not self._async and jax.process_index() == 0:
        integrity.record(self.directory / str(step), (PARAMS, TRAIN_STATE, DATA_STATE))
    _log(logging.INFO, "saving checkpoint %s", self.directory / str(step))
    return True

  def _record_checksums(self) -> None:
    """Orbax's post-finalisation callback (every process, background thread): process 0 hashes the
    items of the step being committed, in its temporary directory (renamed right after)."""
    if jax.process_index() != 0 or self._saving_step is None:
      return
    step = self._saving_step
    candidates = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*")) or [self.directory / str(step)]
    integrity.record(candidates[-1], (PARAMS, TRAIN_STATE, DATA_STATE))

  @contextlib.contextmanager
  def _save_errors(self, step: int | None = None):
    """Turns any exception of a save (this one, or the pending asynchronous one) into
    CheckpointSaveError naming the step and the cause."""
    try:
      yield
    except (CheckpointSaveError, KeyboardInterrupt):
      raise
    except Exception as error:  # pylint: disable=broad-except  # any cause stops the run the same way
      step = self._saving_step if step is None else step
      done = self.all_steps()
      raise CheckpointSaveError(
          f"saving checkpoint step {step} to {self.directory} failed: "
          f"{integrity.short_cause(error)}; the newest complete checkpoint is "
          f"{'step ' + str(done[-1]) if done else 'none'}") from error

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if the last asynchronous save failed; returns at once otherwise."""
    with self._save_errors():
      self._manager.check_for_errors()
      if self._async and self._saving_step is not None and not self._manager.is_saving_in_progress():
        # The save (and Orbax's finalize thread) is over: this returns at once, raising its failure.
        self._manager.wait_until_finished()

  def wait_until_finished(self) -> None:
    with self._save_errors():
      self._manager.wait_until_finished()

  # Restoring.

  def restore_latest(self, target: Any) -> tuple[Any, bytes | None] | None:
    """(state, this process's input position or None) from the newest step that restores; None if none.

    `target`: the abstract state with the current shardings (see `restore_target`). A
    damaged step (CheckpointCorruptError: a file missing, of another size or sha256, values not
    finite) is skipped with a WARNING naming the file; if every step is damaged,
    NoIntactCheckpointError lists them. Any other error (CheckpointReadError: permissions, I/O,
    a timeout, out of memory) stops at once, nothing skipped or deleted. Parameters of other shapes
    (a different model config) raise CheckpointMismatchError at once. With several processes they
    agree (an all-gather) on every step, so all fall back or stop together; a damaged
    input-position file is detected on its own process after Orbax's restore completes, whereas an
    array file that only some processes fail to read makes Orbax's restore barrier fail (an error,
    never diverging steps).
    """
    failures = []
    for step in reversed(self.all_steps()):
      step_dir = self.directory / str(step)
      result, error, code = None, None, _OK
      try:
        result = self.restore(step, target)
      except CheckpointMismatchError:
        raise
      except CheckpointCorruptError as e:
        error, code = str(e), _DAMAGED
      except CheckpointReadError as e:
        error, code = e, _UNREADABLE
      if error is not None and jax.process_index() != 0:  # process 0 reports below
        logger.warning("process %d could not restore %s (%s)", jax.process_index(), step_dir, error)
      codes = _outcomes(code)  # every process must take the same step
      if _UNREADABLE in codes:
        if isinstance(error, CheckpointReadError):
          raise error
        raise CheckpointReadError(f"could not read {step_dir} on process(es) "
                                  f"{[i for i, c in enumerate(codes) if c == _UNREADABLE]} (see "
                                  f"their logs); no checkpoint was skipped or deleted")
      failed = [i for i, c in enumerate(codes) if c]
      if not failed:
        _log(logging.INFO, "restored checkpoint %s", step_dir)
        return result
      failures.append(f"step {step}: {(error or 'damaged on process(es) ' + str(failed))[:300]}")
      self._damaged.add(step)
      _log(logging.WARNING, "checkpoint %s is damaged on process(es) %s (%s); trying the previous "
           "one", step_dir, failed, (error or "see their logs")[:500])
    if failures:
      raise NoIntactCheckpointError(
          f"every checkpoint under {self.directory} is damaged ({'; '.join(failures)}); nothing was "
          f"deleted: move {self.directory} aside to start this run again from step 0, or use "
          f"another --workdir")
    return None

  def restore(self, step: int, target: Any) -> tuple[Any, bytes | None]:
    """Restores one step onto the shardings of `target` (abstract state)."""
    params, rest = _split(target)
    step_dir = self.directory / str(step)
    verified = self._verify(step, (PARAMS, TRAIN_STATE, DATA_STATE))
    with self._read_errors(step, verified):
      self._check_params(step, params)
      items = {PARAMS: ocp.args.StandardRestore(params), TRAIN_STATE: ocp.args.StandardRestore(rest)}
      has_data = integrity.exists(step_dir / DATA_STATE)
      if has_data:
        items[DATA_STATE] = ProcessBytesRestore()
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = target.replace(params=restored[PARAMS], **restored[TRAIN_STATE])
    bad = integrity.nonfinite_leaves(state)
    if bad:
      raise CheckpointCorruptError(f"{step_dir}: restored values are not finite (NaN/Inf) in "
                                   f"{len(bad)} array(s): {', '.join(bad[:5])}")
    data_state = None
    if has_data:
      data = restored[DATA_STATE]
      if data.problem and data.unreadable:
        raise CheckpointReadError(f"could not read {data.problem}; no checkpoint was skipped or "
                                  f"deleted: fix the storage and run the same command again")
      if data.problem:
        raise CheckpointCorruptError(data.problem)
      if data.blob is None:
        _log(logging.WARNING, "%s was saved by %d processes, this run has %d: the input pipeline "
             "position is not restored", step_dir / DATA_STATE, data.num_processes, jax.process_count())
      data_state = data.blob
    return state, data_state

  def restore_params(self, target: Any, step: int | None = None) -> tuple[Any, int]:
    """Only the params item of `step` (default: the newest) onto `target` (abstract params)."""
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no finalised checkpoint under {self.directory}")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} under {self.directory}; "
                              f"available steps: {steps}")
    verified = self._verify(step, (PARAMS,))
    with self._read_errors(step, verified):
      self._check_params(step, target)
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{PARAMS: ocp.args.StandardRestore(target)}))
    bad = integrity.nonfinite_leaves(restored[PARAMS])
    if bad:
      raise CheckpointCorruptError(f"{self.directory / str(step) / PARAMS}: parameters are not "
                                   f"finite (NaN/Inf) in {len(bad)} array(s): {', '.join(bad[:5])}")
    return restored[PARAMS], step

  def _verify(self, step: int, items: tuple[str, ...]) -> bool:
    """Re-hashes the step's files on process 0 and tells every process the outcome (a collective,
    so that all skip or stop together): CheckpointCorruptError names the damaged file,
    CheckpointReadError one that could not be read. False: the step has no checksum record."""
    problem, code = None, _OK
    if jax.process_index() == 0:
      try:
        if not integrity.verify(self.directory / str(step), items):
          code = _UNVERIFIED
          logger.warning("%s has no %s (saved by an older version): its files are not verified",
                         self.directory / str(step), integrity.CHECKSUM_FILE)
      except CheckpointCorruptError as e:
        problem, code = e, _DAMAGED
      except CheckpointReadError as e:
        problem, code = e, _UNREADABLE
    codes = _outcomes(code)
    if codes[0] == _UNREADABLE:
      raise problem or CheckpointReadError(f"could not read {self.directory / str(step)} on "
                                           f"process 0 (see its log)")
    if codes[0] == _DAMAGED:
      raise problem or CheckpointCorruptError(f"{self.directory / str(step)}: damaged (see process 0)")
    return codes[0] != _UNVERIFIED

  @contextlib.contextmanager
  def _read_errors(self, step: int, verified: bool):
    """Orbax's errors reading a step: a missing or truncated file of a step without checksums is
    damage (CheckpointCorruptError); anything else (the files verified, or another error) is a
    CheckpointReadError naming the step and the error, never damage."""
    try:
      yield
    except (CheckpointMismatchError, CheckpointCorruptError, CheckpointReadError):
      raise
    except Exception as e:  # pylint: disable=broad-except  # classified, then re-raised
      step_dir = self.directory / str(step)
      if not verified and _names_damage(e):
        raise CheckpointCorruptError(f"{step_dir}: a file is missing or truncated "
                                     f"({integrity.short_cause(e)[:300]})") from e
      raise integrity.read_error(step_dir, e) from e

  def _check_params(self, step: int, params: Any) -> None:
    """Raises CheckpointMismatchError naming every parameter whose stored shape differs from `params`."""
    stored = self._manager.item_metadata(step)[PARAMS]
    if stored is None:
      return  # unreadable metadata: the restore itself decides
    check_shapes(stored, params, str(self.directory / str(step) / PARAMS))

  def close(self) -> None:
    """Waits for a pending save, then releases Orbax's threads."""
    with self._save_errors():
      self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
