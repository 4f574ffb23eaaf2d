"""The sharded train step: equal to one device, sharded as the rules say, accumulation, NaN skip."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from xlsr_jax.models.params import abstract_params
from xlsr_jax.sharding.mesh import make_mesh
from tests.configs import small_config
from xlsr_jax.training.optimizer import make_optimizer
from xlsr_jax.training.state import build_trainer

SAMPLES = 6400  # 19 frames




def batch_for(trainer, batch=8, seed=0):
  rng = np.random.default_rng(seed)
  wave = rng.standard_normal((batch, SAMPLES)).astype(np.float32)
  lengths = np.full((batch,), SAMPLES, np.int32)
  lengths[1], lengths[5] = 4000, 5000
  wave[np.arange(SAMPLES)[None, :] >= lengths[:, None]] = 0
  return {"waveform": jax.device_put(wave, trainer.batch_sharding["waveform"]),
          "lengths": jax.device_put(lengths, trainer.batch_sharding["lengths"])}


def run(config, mesh_shape, steps=2, batch_seed=0):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  trainer = build_trainer(config, make_mesh(*mesh_shape, devices=devices), SAMPLES)
  state = trainer.create_state()
  metrics = []
  for i in range(steps):
    state, m = trainer.step(state, batch_for(trainer, seed=batch_seed + i))
    metrics.append(jax.device_get(m))
  return trainer, state, metrics


@pytest.fixture(scope="module")
def one_device_run():
  return run(small_config(), (1, 1, 1))


@pytest.fixture(scope="module")
def sharded_run():
  return run(small_config(), (2, 2, 2))


def test_sharded_step_equals_one_device(one_device_run, sharded_run):
  _, s1, m1 = one_device_run
  _, s8, m8 = sharded_run
  for a, b in zip(m1, m8):
    assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
    assert a["num_masked"] == b["num_masked"]
  p1, p8 = jax.device_get(nn.unbox(s1.params)), jax.device_get(nn.unbox(s8.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), p1, p8)
  assert int(s8.step) == 2


def test_parameters_and_optimizer_state_are_sharded_by_the_rules(sharded_run):
  trainer, state, _ = sharded_run
  boxed = abstract_params(trainer.model)  # the logical names the shardings were read from
  assert boxed["wav2vec2"]["encoder"]["layers"]["attention"]["query_kernel"].names == (
      "layers", "embed", "heads", "kv")
  q = state.params["wav2vec2"]["encoder"]["layers"]["attention"]["query_kernel"]
  assert isinstance(q, jax.Array)  # the state is unboxed once its shardings are known
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  # [layers, embed, heads, kv] = [2, 64, 4, 16]: each device holds embed/2 x heads/2.
  assert q.addressable_shards[0].data.shape == (2, 32, 2, 16)
  ffn = state.params["wav2vec2"]["encoder"]["layers"]["feed_forward"]["intermediate"]["kernel"]
  assert ffn.sharding.spec == P(None, "fsdp", "tensor")
  moments = [(jax.tree_util.keystr(path), leaf) for path, leaf in
             jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
             if "query_kernel" in jax.tree_util.keystr(path)]
  assert len(moments) == 2  # Adam's mu and nu
  for path, leaf in moments:
    assert leaf.sharding.spec == P(None, "fsdp", "tensor", None), path
  assert state.rng.sharding.spec == P()


def test_gradient_accumulation_equals_one_big_batch(one_device_run):
  # Diversity is per micro-batch (as fairseq's update_freq), so compare without it.
  config = small_config()
  config.objective.diversity_weight = 0.0
  _, big, mb = run(config, (1, 1, 1), steps=1)
  config.train.grad_accum_steps = 4
  _, acc, ma = run(config, (1, 1, 1), steps=1)
  assert abs(mb[0]["loss"] - ma[0]["loss"]) < 1e-5
  np.testing.assert_allclose(mb[0]["grad_norm"], ma[0]["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(nn.unbox(big.params)), jax.device_get(nn.unbox(acc.params)))


def test_nonfinite_step_is_skipped_and_counted(one_device_run):
  trainer, state, _ = one_device_run
  before = jax.device_get(nn.unbox(state.params))
  bad = batch_for(trainer)
  bad["waveform"] = bad["waveform"].at[0, 0].set(jnp.nan)
  new_state, m = trainer.step(jax.tree.map(jnp.copy, state), bad)
  assert m["skipped_nonfinite"] == 1 and int(new_state.total_nonfinite) == 1
  assert int(new_state.step) == int(state.step) + 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(nn.unbox(new_state.params)))


def test_skipped_step_keeps_the_learning_rate_schedule_with_the_step(one_device_run):
  """After k skipped steps the rate applied is schedule(step), the one logged (#24: optax's
  schedule count stayed behind, so the applied rate lagged by k and never reached its end)."""
  trainer, state, _ = one_device_run
  bad = batch_for(trainer)
  bad["waveform"] = bad["waveform"].at[0, 0].set(jnp.nan)
  is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
  counts = lambda s: [int(n.count) for n in jax.tree.leaves(s.opt_state, is_leaf=is_schedule)
                      if is_schedule(n)]
  assert counts(state) == [int(state.step)]
  skipped, _ = trainer.step(jax.tree.map(jnp.copy, state), bad)
  skipped, _ = trainer.step(skipped, bad)
  step = int(skipped.step)
  assert counts(skipped) == [int(state.step) + 2] == [step]
  _, m = trainer.step(skipped, batch_for(trainer))  # donates `skipped`
  schedule = make_optimizer(trainer.config.optimizer, trainer.config.train.num_steps)[1]
  np.testing.assert_allclose(m["learning_rate"], schedule(step), rtol=1e-6)


def test_contrastive_loss_runs_per_batch_shard_in_the_sharded_step(sharded_run):
  """The sharded step's contrastive part is a shard_map over (data, fsdp); one device needs none."""
  trainer, state, _ = sharded_run
  batch = batch_for(trainer)
  with jax.set_mesh(trainer.mesh):
    hlo = trainer.train_step.lower(state, batch).as_text()
  assert "shard_map" in hlo or "sdy.manual_computation" in hlo or "xla.sdy.manual" in hlo


def test_each_bucket_crop_compiles_once_and_reports_masked_and_real_frames(one_device_run):
  """Batches of another crop (a duration bucket) run on the same state; the step reports each
  row's masked share of its real frames and the real frames, for either shape."""
  trainer, state, _ = one_device_run
  rng = np.random.default_rng(3)
  for samples, rows in ((3200, 16), (SAMPLES, 8)):
    wave = rng.standard_normal((rows, samples)).astype(np.float32)
    lengths = np.full((rows,), samples, np.int32)
    lengths[0] = samples // 2
    wave[0, samples // 2:] = 0
    batch = {"waveform": jax.device_put(wave, trainer.batch_sharding["waveform"]),
             "lengths": jax.device_put(lengths, trainer.batch_sharding["lengths"])}
    state, m = trainer.step(jax.tree.map(jnp.copy, state), batch)
    frames = lambda n: (n - 400) // 320 + 1
    assert float(m["real_frames"]) == sum(frames(int(n)) for n in lengths)
    assert 0.2 < float(m["masked_fraction"]) < 0.8 and np.isfinite(float(m["loss"]))
  assert trainer.train_step._cache_size() == 2  # one program per crop shape
