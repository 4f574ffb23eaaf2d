"""When a run must save and stop: SIGTERM (a preempted VM, a cluster's kill), a first Ctrl-C, or,
under jax.distributed, jax's preemption sync point (every process stops at the same step).

`training.fit` watches for the length of its loop:

  with preemption.Watcher() as watcher:
    for step in ...:
      if watcher.reached(step + 1): save, then stop

A second Ctrl-C aborts at once (KeyboardInterrupt). The previous handlers come back on exit.
"""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Watcher:
  """Catches SIGTERM and SIGINT while open (main thread, no jax.distributed: there jax's own
  preemption service decides); `reached(step)` says whether to save and stop after that step."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous: dict[int, object] = {}
    if jax.distributed.is_initialized() or threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be installed from the main thread
    self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
                      signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint)}

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._requested.set()

  def _on_sigint(self, signum, frame) -> None:
    """First Ctrl-C: save and stop like SIGTERM; a second one aborts."""
    del signum, frame
    if self._requested.is_set():
      raise KeyboardInterrupt
    # Set before printing: a second press arriving during the print must abort, not repeat this.
    self._requested.set()
    print("interrupted: saving a checkpoint at the end of this step, then exiting "
          "(Ctrl-C again to abort without saving)", flush=True)

  def reached(self, step: int) -> bool:
    """True when the run should save after `step` and stop. Under jax.distributed this is jax's
    preemption sync point, a collective: every process calls it at every step."""
    if jax.distributed.is_initialized():
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()

  def close(self) -> None:
    """Puts the previous SIGTERM / SIGINT handlers back."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self) -> "Watcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
