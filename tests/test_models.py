"""Model structure: exact parameter counts of the presets, logical axis names, dtypes, remat, summary,
and the CPU kernel switch."""
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlsr_jax import summary
from xlsr_jax.models import Wav2Vec2Model, get_preset

EXPECTED = {  # Wav2Vec2ForPreTraining of the reference with these sizes (spec/xlsr.md)
    "xlsr_300m": (317_390_592, 315_438_720),
    "xlsr_1b": (965_514_752, 962_497_408),
    "xlsr_2b": (2_162_932_352, 2_159_259_648),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parameter_counts_equal_reference(name):
  rows = dict(summary.count_by_component(get_preset(name)))
  total = sum(rows.values())
  encoder = total - rows["quantizer"] - rows["project_q"] - rows["project_hid"]
  assert (total, encoder) == EXPECTED[name]


def test_base_preset_count_matches_reference():
  import transformers
  from xlsr_jax.checkpoints import hf_layout
  cfg = get_preset("base")
  hf_cfg = transformers.Wav2Vec2Config(**hf_layout.config_to_hf(cfg))
  with jax.default_device(jax.devices("cpu")[0]):
    import torch
    with torch.device("meta"):
      ref = transformers.Wav2Vec2ForPreTraining(hf_cfg)
  assert sum(dict(summary.count_by_component(cfg)).values()) == sum(p.numel() for p in ref.parameters())


def test_every_parameter_has_logical_axis_names():
  params = summary.abstract_params(get_preset("tiny"))
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == len(leaf.value.shape)
  # Scanned layer weights carry the stacked "layers" axis first.
  attn = params["wav2vec2"]["encoder"]["layers"]["attention"]["query_kernel"]
  assert attn.names == ("layers", "embed", "heads", "kv")


def _run(cfg, deterministic=True):
  model = Wav2Vec2Model(cfg)
  wave = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3200)), jnp.float32)
  params = model.init(jax.random.key(0), wave)["params"]
  return model, params, wave


def test_param_dtype_and_compute_dtype_are_separate():
  cfg = get_preset("tiny", dtype=jnp.bfloat16, param_dtype=jnp.float32)
  model, params, wave = _run(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(params)))
  out = model.apply({"params": params}, wave)
  assert out["last_hidden_state"].dtype == jnp.bfloat16


@pytest.mark.parametrize("policy", ["full", "dots", "save_attention_and_ffn_out"])
def test_remat_policy_keeps_values_and_gradients(policy):
  cfg = get_preset("tiny")
  model, params, wave = _run(cfg)
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, wave)["last_hidden_state"] ** 2)
  g0 = jax.grad(lambda p: loss(model, p))(params)
  g1 = jax.grad(lambda p: loss(Wav2Vec2Model(cfg.replace(remat_policy=policy)), p))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)


def test_layerdrop_and_dropout_only_in_training():
  cfg = get_preset("tiny", layerdrop=0.5, hidden_dropout=0.1)
  model, params, wave = _run(cfg)
  eval_a = model.apply({"params": params}, wave)["last_hidden_state"]
  eval_b = model.apply({"params": params}, wave)["last_hidden_state"]
  np.testing.assert_array_equal(eval_a, eval_b)
  rngs = lambda s: {"dropout": jax.random.key(s), "layerdrop": jax.random.key(s)}
  train_a = model.apply({"params": params}, wave, deterministic=False, rngs=rngs(1))["last_hidden_state"]
  train_b = model.apply({"params": params}, wave, deterministic=False, rngs=rngs(2))["last_hidden_state"]
  assert not np.allclose(train_a, train_b)


def test_feature_grad_mult_scales_feature_encoder_gradients():
  cfg = get_preset("tiny")
  model, params, wave = _run(cfg)

  def conv_grad(mult):
    m = Wav2Vec2Model(cfg.replace(feature_grad_mult=mult))
    g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, wave)["last_hidden_state"]))(params)
    return nn.unbox(g)["feature_extractor"]["conv_0"]["kernel"]

  np.testing.assert_allclose(conv_grad(0.1), 0.1 * conv_grad(1.0), rtol=1e-4, atol=1e-7)
  assert np.all(conv_grad(0.0) == 0)


def test_summary_cli_prints_total(capsys):
  assert summary.main(["--preset", "xlsr_2b"]) == 0
  out = capsys.readouterr().out
  assert "2,162,932,352" in out and "transformer layers" in out


def _conv_loss(fn):
  return lambda x, w: jnp.sum(jnp.sin(fn(x, w, 4, 4)))  # width 8, padding 4, 4 groups


def _conv_args():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal((2, 50, 32)), jnp.float32),
          jnp.asarray(rng.standard_normal((8, 8, 32)), jnp.float32))


def test_positional_conv_cpu_kernel_equals_plain_xla_and_is_chosen_on_cpu():
  """The CPU weight gradient (einsums per kernel position) and XLA's own autodiff agree; a
  program lowered for CPU takes the CPU kernel (its lax.map is a while loop)."""
  from xlsr_jax.models.layers import grouped_conv1d, grouped_conv1d_cpu, grouped_conv1d_xla
  x, w = _conv_args()
  for fn in (grouped_conv1d_cpu, grouped_conv1d):
    np.testing.assert_allclose(fn(x, w, 4, 4), grouped_conv1d_xla(x, w, 4, 4), rtol=1e-6)
    got = jax.grad(_conv_loss(fn), (0, 1))(x, w)
    expected = jax.grad(_conv_loss(grouped_conv1d_xla), (0, 1))(x, w)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
  hlo = jax.jit(jax.grad(_conv_loss(grouped_conv1d), (0, 1))).lower(x, w).as_text()
  assert "while" in hlo


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (TPU compiler)")
def test_positional_conv_lowered_for_tpu_is_plain_xla():
  """For TPU (here an ahead-of-time lowering on this CPU machine) the program holds XLA's three
  convolutions (forward, input and weight gradients) and no CPU kernel loop."""
  from jax.sharding import NamedSharding, PartitionSpec
  from xlsr_jax.models.layers import grouped_conv1d
  from xlsr_jax.sharding import mesh as mesh_lib
  from xlsr_jax.sharding.topologies import parse_topology, topology_devices
  mesh = mesh_lib.make_mesh(4, 1, 1, devices=topology_devices(parse_topology("v5e-4")))
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
          for a in _conv_args()]
  with jax.set_mesh(mesh):
    hlo = jax.jit(jax.grad(_conv_loss(grouped_conv1d), (0, 1))).lower(*args).as_text()
  assert "while" not in hlo and hlo.count("stablehlo.convolution") == 3
