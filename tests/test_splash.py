"""Pallas splash attention: equal to jax.nn.dot_product_attention (values and gradients, with key
padding), sharded per (batch, heads) shard under a mesh, and compiled by the TPU compiler."""
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlsr_jax.models.config import get_preset
from xlsr_jax.models.splash import block_size_for, splash_attention
from xlsr_jax.sharding import mesh as mesh_lib

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (requirements-tpu.txt)")


def _qkv_and_valid(batch=2, frames=300, heads=2, head_dim=8, lengths=(300, 131)):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((batch, frames, heads, head_dim)), jnp.float32)
             for _ in range(3))
  valid = jnp.asarray(np.arange(frames)[None, :] < np.array(lengths)[:, None])
  return q, k, v, valid


def _reference(q, k, v, valid):
  return jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :])


def test_block_size_pads_frames_to_whole_blocks():
  assert block_size_for(999, 512) == (1024, 512)  # 20 s crop
  assert block_size_for(300, 512) == (384, 384)
  assert block_size_for(300, 128) == (384, 128)
  with pytest.raises(ValueError, match="multiple of 128"):
    block_size_for(300, 100)


def test_splash_equals_dot_product_attention_with_padded_keys():
  # 300 frames in 128-blocks: three blocks, the last one partly block padding; the second
  # utterance is 131 frames long, so most of its keys are masked by segment ids.
  q, k, v, valid = _qkv_and_valid()
  keep = np.asarray(valid)[:, :, None, None]

  def loss(attend):
    return lambda q, k, v: jnp.sum(jnp.where(keep, attend(q, k, v) ** 2, 0.0))

  ours = lambda q, k, v: splash_attention(q, k, v, valid, max_block=128)
  ref = lambda q, k, v: _reference(q, k, v, valid)
  np.testing.assert_allclose(np.where(keep, ours(q, k, v), 0), np.where(keep, ref(q, k, v), 0),
                             atol=2e-6)
  ours_grads = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  ref_grads = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", ours_grads, ref_grads):
    np.testing.assert_allclose(a, b, atol=5e-6, err_msg=f"d loss / d {name}")
  # Padded keys get no gradient: nothing attended to them.
  assert float(jnp.abs(ours_grads[1][1, 131:]).max()) == 0.0


def test_splash_runs_per_shard_under_the_mesh():
  q, k, v, valid = _qkv_and_valid(batch=4, frames=140, heads=4, lengths=(140, 100, 60, 139))
  mesh = mesh_lib.make_mesh(2, 2, 2, devices=jax.devices()[:8])
  rules = mesh_lib.DEFAULT_RULES
  fn = jax.jit(lambda *a: splash_attention(*a, max_block=128))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    text = fn.lower(q, k, v, valid).as_text()
    out = fn(q, k, v, valid)
  assert "manual_computation" in text or "shard_map" in text
  keep = np.asarray(valid)[:, :, None, None]
  np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, _reference(q, k, v, valid), 0),
                             atol=2e-6)


def test_config_names_the_attention_choices():
  assert get_preset("tiny", attention_impl="splash").attention_impl == "splash"
  with pytest.raises(ValueError, match="splash"):
    get_preset("tiny", attention_impl="flash")
  with pytest.raises(ValueError, match="multiple of 128"):
    get_preset("tiny", splash_block_size=200)


@pytest.mark.slow
@needs_libtpu
def test_splash_compiles_to_a_mosaic_kernel_for_a_tpu_topology():
  from xlsr_jax.sharding.topologies import parse_topology, topology_devices
  devices = topology_devices(parse_topology("v5e-4"))
  mesh = mesh_lib.make_mesh(2, 1, 2, devices=devices)
  batch_spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  qkv = jax.ShapeDtypeStruct((4, 999, 16, 64), jnp.bfloat16, sharding=batch_spec)
  valid = jax.ShapeDtypeStruct((4, 999), jnp.bool_, sharding=batch_spec)

  def loss(q, k, v, valid):
    return jnp.sum(splash_attention(q, k, v, valid).astype(jnp.float32) ** 2)

  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_RULES):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(qkv, qkv, qkv, valid)
    compiled = lowered.compile()
  assert "tpu_custom_call" in lowered.as_text()  # the Pallas kernel, not an interpreted loop
  # The [batch, heads, frames, frames] scores never exist: temporaries stay far below one copy.
  scores_bytes_per_chip = 2 * 8 * 1024 * 1024 * 4
  assert compiled.memory_analysis().temp_size_in_bytes < scores_bytes_per_chip
