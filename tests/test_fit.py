"""training/fit.py on its own, in process, with a toy state: the hooks' points and cadence, the
history, a hook's exception ending the run after its log line, and a SIGTERM saving and stopping;
a second fit resumes from the saved step."""
import os
import signal

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from xlsr_jax.sharding import mesh as mesh_lib
from xlsr_jax.training import fit, run
from xlsr_jax.training import metric_writer as metrics_lib


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict  # {"w": the sum of every batch seen}


def _init():
  return _State(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros((), jnp.float32)})


def _step(state, batch):
  total = jnp.sum(batch["x"])
  return state.replace(step=state.step + 1, params={"w": state.params["w"] + total}), {"loss": total}


class _Toy:
  """A fit.StepOwner on one device."""

  def __init__(self):
    self.mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    self.abstract_state, self.state_sharding = run.abstract_state(_init, self.mesh, ())
    self.batch_spec = PartitionSpec()
    self.create_state = _init
    self.step = run.jit_train_step(_step, self.mesh, self.state_sharding,
                                   NamedSharding(self.mesh, self.batch_spec))


class _Recorder(fit.Hook):
  def __init__(self, every=0, stop_at=None, kill_at=None):
    self.every, self.stop_at, self.kill_at, self.calls = every, stop_at, kill_at, []

  def on_step(self, done, rows):
    self.calls.append(("step", done, float(rows["x"][0])))
    if done == self.kill_at:
      os.kill(os.getpid(), signal.SIGTERM)

  def on_log(self, done, interval, values):
    self.calls.append(("log", done))
    values["twice"] = 2 * values["loss"]
    return FloatingPointError(f"stop at {done}") if done == self.stop_at else None

  def on_eval(self, done, state, writer):
    self.calls.append(("eval", done))
    return [{"step": done, "eval_w": float(state.params["w"])}]

  def on_save(self, done, history):
    self.calls.append(("save", done, len(history)))

  def on_end(self, state, history):
    self.calls.append(("end", int(state.step)))


def _batches(start=0):
  i = start
  while True:
    yield {"x": np.full((2,), i, np.float32)}
    i += 1


def _open(tmp_path):
  return run.open_checkpoints(str(tmp_path), ml_collections.ConfigDict(
      dict(checkpoint_every=2, keep_checkpoints=3)))


def test_hooks_history_and_cadence(tmp_path):
  toy, hook = _Toy(), _Recorder(every=3)
  writer = metrics_lib.MetricWriter(str(tmp_path), 4)
  fitted = fit.fit(toy, _init(), _batches(), _open(tmp_path), writer, num_steps=4, log_every=2,
                   hooks=[hook, fit.Evaluation(2, lambda s: {"w": float(s.params["w"])})])
  writer.close()
  assert not fitted.preempted and int(fitted.state.step) == 4
  assert [c[0] for c in hook.calls] == ["step", "step", "log", "save", "step", "eval", "step",
                                        "log", "eval", "save", "end"]
  assert [r["step"] for r in fitted.history] == [2, 2, 3, 4, 4, 4]
  assert fitted.history[0]["loss"] == 1.0 and fitted.history[0]["twice"] == 2.0  # (0+0, 2+2)/2
  assert fitted.history[1] == {"step": 2, "eval_w": 2.0}  # fit.Evaluation's row
  assert fitted.last["loss"] == 5.0 and "steps_per_second" in fitted.last
  assert ("save", 4, 6) in hook.calls  # the history as it was when the step was saved


def test_hook_exception_ends_the_run_after_its_log_line(tmp_path, capsys):
  toy, hook = _Toy(), _Recorder(stop_at=2)
  writer, manager = metrics_lib.MetricWriter(str(tmp_path), 4), _open(tmp_path)
  with pytest.raises(FloatingPointError, match="stop at 2"):
    fit.fit(toy, _init(), _batches(), manager, writer, num_steps=4, log_every=2, hooks=[hook])
  run.close(manager)
  writer.close()
  assert "step 2/4" in capsys.readouterr().out and ("save", 2, 1) not in hook.calls


def test_sigterm_saves_and_stops_then_a_second_fit_resumes(tmp_path):
  toy, hook = _Toy(), _Recorder(kill_at=3)
  writer = metrics_lib.MetricWriter(str(tmp_path), 5)
  manager = _open(tmp_path)
  fitted = fit.fit(toy, _init(), _batches(), manager, writer, num_steps=5, log_every=2,
                   hooks=[hook])
  assert fitted.preempted and int(fitted.state.step) == 3 and hook.calls[-1] == ("end", 3)
  assert manager.all_steps() == [2, 3]
  manager = _open(tmp_path)
  state, _ = run.restore_or_init(manager, toy.abstract_state, toy.state_sharding,
                                 lambda: pytest.fail("a checkpoint exists"))
  hook = _Recorder()
  fitted = fit.fit(toy, state, _batches(3), manager, writer, num_steps=5, log_every=2,
                   hooks=[hook])
  writer.close()
  assert [c[1] for c in hook.calls if c[0] == "step"] == [4, 5]
  assert float(fitted.state.params["w"]) == 2 * sum(range(5)) and not fitted.preempted
