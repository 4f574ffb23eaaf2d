"""Training checkpoints: bit-exact round trip, restore onto another mesh, async, keep-k, corruption."""
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xlsr_jax.checkpoints import manager as ckpt
from xlsr_jax.checkpoints.manager import CheckpointManager
from xlsr_jax.sharding.mesh import make_mesh
from tests.configs import small_config
from xlsr_jax.training.state import build_trainer
from xlsr_jax.models.params import unbox

SAMPLES = 6400
QUERY = ("wav2vec2", "encoder", "layers", "attention", "query_kernel")


def tiny_config():
  return small_config()


def random_state(trainer, seed):
  """A train state with distinct random values in every leaf (no compile: numpy + device_put)."""
  rng = np.random.default_rng(seed)
  target = ckpt.restore_target(trainer.abstract_state, trainer.state_sharding)

  def fill(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = rng.integers(0, 2**32, (2,), dtype=np.uint32)
      return jax.random.wrap_key_data(jax.device_put(data, x.sharding))
    if np.issubdtype(x.dtype, np.integer):
      value = rng.integers(0, 1000, x.shape).astype(x.dtype)
    else:
      value = rng.standard_normal(x.shape).astype(x.dtype)
    return jax.device_put(value, x.sharding)

  return jax.tree.map(fill, target)


def host_values(state):
  """Every leaf as numpy (PRNG keys as their raw key data), unboxed."""
  def get(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, unbox(state))


def assert_equal_states(a, b):
  jax.tree.map(np.testing.assert_array_equal, host_values(a), host_values(b))


def query_kernel(state):
  node = state.params
  for key in QUERY:
    node = node[key]
  return node


@pytest.fixture(scope="module")
def trainers():
  config = tiny_config()
  return {shape: build_trainer(config, make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))]),
                               SAMPLES)
          for shape in [(1, 1, 1), (2, 2, 2)]}


@pytest.fixture(scope="module")
def states(trainers):
  return {shape: random_state(trainer, seed) for seed, (shape, trainer) in enumerate(trainers.items())}


def target_of(trainer):
  return ckpt.restore_target(trainer.abstract_state, trainer.state_sharding)


def test_round_trip_is_bit_exact(tmp_path, trainers, states):
  state, blob = states[(2, 2, 2)], os.urandom(3000)
  with CheckpointManager(tmp_path, save_every=5, keep=3, async_save=False) as mngr:
    assert mngr.save(5, state, blob)
  with CheckpointManager(tmp_path, save_every=5, keep=3) as mngr:  # a fresh run resuming
    restored, data = mngr.restore_latest(target_of(trainers[(2, 2, 2)]))
  assert data == blob
  assert_equal_states(state, restored)
  assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
  assert int(restored.step) == int(state.step)
  assert isinstance(query_kernel(restored), jax.Array)  # plain arrays, as create_state gives


@pytest.mark.parametrize("saved_on,restored_on", [((1, 1, 1), (2, 2, 2)), ((2, 2, 2), (1, 1, 1))])
def test_restore_onto_another_mesh_shape(tmp_path, trainers, states, saved_on, restored_on):
  with CheckpointManager(tmp_path, save_every=1, keep=1, async_save=False) as mngr:
    mngr.save(3, states[saved_on], None)
    restored, data = mngr.restore_latest(target_of(trainers[restored_on]))
  assert data is None
  assert_equal_states(states[saved_on], restored)
  mesh = trainers[restored_on].mesh
  q = query_kernel(restored)
  assert q.sharding.mesh.shape == mesh.shape
  if restored_on == (2, 2, 2):
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 32, 2, 16)
  assert len(q.sharding.device_set) == mesh.size
  def check(sharding, subtree):  # state_sharding holds one sharding per parameter
    for leaf in jax.tree.leaves(unbox(subtree)):
      assert leaf.sharding == sharding, (leaf.sharding, sharding)
  jax.tree.map(check, trainers[restored_on].state_sharding, restored)

def test_async_save_copies_before_returning(tmp_path, trainers):
  trainer = trainers[(2, 2, 2)]
  state = random_state(trainer, seed=7)
  expected = host_values(state)
  with CheckpointManager(tmp_path, save_every=1, keep=2, async_save=True) as mngr:
    assert mngr.save(1, state, b"position")
    for leaf in jax.tree.leaves(unbox(state)):  # as a donating train step would
      leaf.delete()
    mngr.wait_until_finished()
    assert mngr.all_steps() == [1]
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
    restored, data = mngr.restore_latest(target_of(trainer))
  jax.tree.map(np.testing.assert_array_equal, expected, host_values(restored))
  assert data == b"position"


def test_should_save_and_keep_last_k(tmp_path, states):
  state = states[(1, 1, 1)]
  with CheckpointManager(tmp_path, save_every=2, keep=2, async_save=True) as mngr:
    assert [s for s in range(7) if mngr.should_save(s)] == [2, 4, 6]
    assert mngr.should_save(3, last=True)
    for step in range(1, 7):
      mngr.save(step, state, b"x")  # saves 2, 4, 6 only
    assert not mngr.save(6, state, force=True)  # already saved
    assert mngr.save(7, state, force=True)
    mngr.wait_until_finished()
    assert mngr.all_steps() == [6, 7]
    assert not mngr.should_save(6, last=True)
  assert sorted(os.listdir(tmp_path)) == ["6", "7"]


def _largest_file(directory):
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# A failed Orbax restore leaves coroutines that are collected after their event loop closed.
ORBAX_FAILED_RESTORE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_FAILED_RESTORE
@pytest.mark.parametrize("damage", ["truncate_params", "delete_opt_state_data", "truncate_data_state"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, trainers, states, caplog, damage):
  trainer = trainers[(1, 1, 1)]
  older, newer = states[(1, 1, 1)], random_state(trainer, seed=11)
  with CheckpointManager(tmp_path, save_every=1, keep=3, async_save=False) as mngr:
    mngr.save(2, older, b"older")
    mngr.save(4, newer, b"newer")
  latest = tmp_path / "4"
  if damage == "truncate_params":
    _truncate(_largest_file(latest / "params"))
  elif damage == "delete_opt_state_data":
    os.remove(latest / "train_state" / "_METADATA")
  else:
    _truncate(latest / "data_state" / "process_0.bin")
  with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
    with CheckpointManager(tmp_path, save_every=1, keep=3) as mngr:
      restored, data = mngr.restore_latest(target_of(trainer))
  assert data == b"older"
  assert_equal_states(older, restored)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(str(latest) in w for w in warnings), warnings


@ORBAX_FAILED_RESTORE
def test_unfinalised_step_is_ignored_and_all_corrupt_is_an_error(tmp_path, trainers, states):
  trainer = trainers[(1, 1, 1)]
  with CheckpointManager(tmp_path, save_every=1, keep=3, async_save=False) as mngr:
    mngr.save(2, states[(1, 1, 1)], b"two")
  # A save that died before Orbax renamed its temporary directory.
  shutil.copytree(tmp_path / "2", tmp_path / "8.orbax-checkpoint-tmp-1700000000")
  with CheckpointManager(tmp_path, save_every=1, keep=3) as mngr:
    assert mngr.all_steps() == [2]
    restored, data = mngr.restore_latest(target_of(trainer))
  assert data == b"two" and int(restored.step) == int(states[(1, 1, 1)].step)
  _truncate(_largest_file(tmp_path / "2" / "params"))
  with CheckpointManager(tmp_path, save_every=1, keep=3) as mngr:
    with pytest.raises(RuntimeError, match=str(tmp_path / "2")):
      mngr.restore_latest(target_of(trainer))


def test_empty_directory_restores_nothing(tmp_path, trainers):
  with CheckpointManager(tmp_path / "none", save_every=1, keep=1) as mngr:
    assert mngr.restore_latest(target_of(trainers[(1, 1, 1)])) is None


def test_other_model_config_is_an_error_not_a_fallback(tmp_path, states):
  config = tiny_config()
  config.model.num_hidden_layers = 3
  other = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), SAMPLES)
  with CheckpointManager(tmp_path, save_every=1, keep=3, async_save=False) as mngr:
    mngr.save(1, states[(1, 1, 1)])
    mngr.save(2, states[(1, 1, 1)])
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match=r"2/params .*\['layers'\]\['attention'\]\['key_kernel'\]: checkpoint \(2, 64, 4, 16\), "
                             r"model \(3, 64, 4, 16\)"):
      mngr.restore_latest(target_of(other))
