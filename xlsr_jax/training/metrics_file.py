"""`<workdir>/history.json`: the logged metrics of every segment of a pretraining run, kept across
resumes (a downstream workdir's metrics.json holds its test results instead).

A resumed run restarts at its checkpoint's step: entries of earlier segments up to that step are
kept, later ones (logged after the checkpoint, then lost with the process) are replaced by the
new segment's. Written atomically (temporary file + rename) at every checkpoint and at the end, so
a crash leaves the previous complete file.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax

from xlsr_jax.training import fit

FILENAME = "history.json"
LEGACY_FILENAME = "metrics.json"  # what runs before this name wrote; read when history.json is absent


def read(workdir: str) -> list[dict]:
  """The entries in `workdir/history.json` (or an older run's metrics.json; [] when neither)."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    path = os.path.join(workdir, LEGACY_FILENAME)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    try:
      entries = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); move it away to start a new history") from e
  return entries if isinstance(entries, list) else []


def write(workdir: str, start_step: int, segment: Sequence[dict]) -> None:
  """history.json = earlier entries with step <= start_step, then `segment` (this run's entries)."""
  kept = [e for e in read(workdir) if int(e.get("step", 0)) <= start_step]
  path = os.path.join(workdir, FILENAME)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(kept + list(segment), f, indent=1)
  os.replace(tmp, path)


class History(fit.Hook):
  """`fit`'s history as history.json (process 0), at every checkpoint and at the end; the run
  resumed at `start_step`."""

  def __init__(self, workdir: str, start_step: int):
    self.workdir, self.start_step = workdir, start_step

  def on_save(self, done: int, history: list[dict]) -> None:
    if jax.process_index() == 0:
      write(self.workdir, self.start_step, history)

  def on_end(self, state: Any, history: list[dict]) -> None:
    self.on_save(int(state.step), history)
