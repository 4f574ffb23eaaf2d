"""training/preemption.py: a SIGTERM or a first Ctrl-C asks the run to save and stop; a second
Ctrl-C aborts; the previous handlers come back when the watcher closes."""
import os
import signal

import pytest

from xlsr_jax.training import preemption


def test_sigterm_marks_preemption():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.Watcher() as watcher:
    assert not watcher.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.reached(2)
  assert signal.getsignal(signal.SIGTERM) == before


def test_first_ctrl_c_stops_a_second_aborts(capsys):
  before = signal.getsignal(signal.SIGINT)
  with preemption.Watcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.reached(1) and capsys.readouterr().out.startswith("interrupted:")
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) == before
