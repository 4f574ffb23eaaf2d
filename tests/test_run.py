"""The run skeleton (training/run.py) on its own, in process: init when there is nothing to
restore, the log cadence (host values once per interval), saving on the cadence, and a SIGTERM
turning into a saved step and a stop; a second run restores that step and the input position."""
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
from xlsr_jax.training import preemption, run


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def _init():
  return _State(step=jnp.zeros((), jnp.int32), params={"w": jnp.arange(4.0)})


def _step(state, batch):
  total = jnp.sum(batch["x"])
  return state.replace(step=state.step + 1, params={"w": state.params["w"] + total}), {"loss": total}


def test_init_log_cadence_save_preempt_then_restore(tmp_path):
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  abstract, shardings = run.abstract_state(_init, mesh, ())
  assert abstract.params["w"].shape == (4,) and not isinstance(abstract.params["w"], jax.Array)
  train_cfg = ml_collections.ConfigDict(dict(checkpoint_every=2, keep_checkpoints=3))
  manager = run.open_checkpoints(str(tmp_path), train_cfg)
  created = []
  state, data_state = run.restore_or_init(manager, abstract, shardings,
                                          lambda: created.append(1) or _init())
  assert created == [1] and data_state is None
  step = run.jit_train_step(_step, mesh, shardings, NamedSharding(mesh, PartitionSpec()))
  log = run.LogCadence(log_every=2, num_steps=5, start_step=0)
  logged = []
  with preemption.Watcher() as watcher:
    for i in range(5):
      state, metrics = step(state, {"x": np.full((2,), i, np.float32)})
      if (interval := log.add(i + 1, metrics)) is not None:
        assert all(not isinstance(r["loss"], jax.Array) for r in interval.rows)  # on the host
        logged.append((i + 1, interval.mean()["loss"]))
      if i + 1 == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 3: save it, then stop
      if run.save_or_stop(manager, watcher, i + 1, state, last=i + 1 == 5,
                          data_state=lambda: b"position"):
        break
  assert i + 1 == 3 and logged == [(2, 1.0)]  # losses 0 and 2 averaged at step 2
  assert manager.all_steps() == [2, 3]  # the cadence's step 2 and the preempted step 3
  run.close(manager)

  manager = run.open_checkpoints(str(tmp_path), train_cfg)
  state, data_state = run.restore_or_init(manager, abstract, shardings,
                                          lambda: pytest.fail("a checkpoint exists"))
  run.close(manager)
  assert int(state.step) == 3 and data_state == b"position"
  np.testing.assert_array_equal(jax.device_get(state.params["w"]), np.arange(4.0) + 6.0)
