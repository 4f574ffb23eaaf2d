"""Analytic FLOPs: exact against the matmuls/convs the model program contains, close to XLA's count."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest
from jax.extend import core as jax_core

from xlsr_jax.models import Wav2Vec2ForPreTraining, get_preset
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.objectives import losses
from xlsr_jax.training import devices, flops


def forward_program(config, size):
  """The pretraining forward (model + contrastive logits) and abstract arguments for it."""
  model = Wav2Vec2ForPreTraining(config)
  frames = frame_lengths(size.num_samples, config)
  args = (jax.ShapeDtypeStruct((size.batch, size.num_samples), jnp.float32),
          jax.ShapeDtypeStruct((size.batch, frames), bool),
          jax.ShapeDtypeStruct((size.batch, size.num_masked), jnp.int32),
          jax.ShapeDtypeStruct((size.batch, size.num_masked, size.num_negatives), jnp.int32))
  params = jax.eval_shape(lambda w, t, i: model.init(jax.random.key(0), w, None, t, i)["params"],
                          *args[:3])

  def forward(params, waveform, mask_time, masked_indices, negative_indices):
    out = model.apply({"params": params}, waveform, None, mask_time, masked_indices)
    return losses.contrastive_logits(out["context"], out["targets"], negative_indices)
  return forward, (params,) + args


def jaxpr_matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general / conv_general_dilated, through jit, scan and remat."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    elif name == "conv_general_dilated":
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
      rhs = eqn.invars[1].aval.shape
      taps = math.prod(rhs[d] for d in rhs_spec[2:]) * rhs[rhs_spec[1]]
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * taps
    repeats = eqn.params.get("length", 1) if name == "scan" else 1
    for value in eqn.params.values():
      if isinstance(value, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
        inner = value.jaxpr if isinstance(value, jax_core.ClosedJaxpr) else value
        total += repeats * jaxpr_matmul_flops(inner)
    if name == "cond":  # one branch runs (e.g. the CPU-kernel switch, models.layers.cpu_or_xla)
      total += max(jaxpr_matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
  return total


@pytest.mark.parametrize("preset,num_samples", [("tiny", 48_000), ("base", 16_000),
                                                ("xlsr_300m", 16_000)])
def test_analytic_forward_equals_the_programs_matmuls(preset, num_samples):
  # Exact: every matmul and conv the forward program runs (traced, nothing compiled), counted from
  # the jaxpr, equals the analytic breakdown (with the M x M similarity matmul the loss uses).
  config = get_preset(preset)
  size = flops.StepSize(batch=2, num_samples=num_samples, num_masked=23, num_negatives=7)
  forward, args = forward_program(config, size)
  counted = jaxpr_matmul_flops(jax.make_jaxpr(forward)(*args).jaxpr)
  analytic = flops.forward_flops(config, size, similarity_matrix=True)
  assert counted == sum(analytic.values()), analytic


def test_analytic_forward_is_close_to_xla_cost_analysis():
  # XLA:CPU counts more than the matmuls: 1 FLOP per elementwise op (LayerNorm, the erf GELU's
  # polynomial, softmax, bias adds). In the tiny preset that is large, because its first conv has one
  # input channel (20 FLOPs per output element, no more than its LayerNorm + GELU cost) and 32
  # channels elsewhere; it also skips the taps of the positional conv that fall on zero padding,
  # which we count (the MXU does that work). Measured: analytic / XLA = 0.76 for the tiny preset.
  config = get_preset("tiny")
  size = flops.StepSize(batch=2, num_samples=48_000, num_masked=60, num_negatives=20)
  forward, args = forward_program(config, size)
  compiled = jax.jit(forward).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = sum(flops.forward_flops(config, size, similarity_matrix=True).values())
  assert 0.70 <= analytic / cost["flops"] <= 1.0, (analytic, cost["flops"])


def test_train_step_is_three_forwards_and_components_scale():
  config = get_preset("xlsr_300m")
  size = flops.StepSize(batch=4, num_samples=320_000, num_masked=490, num_negatives=100)
  forward = flops.forward_flops(config, size)
  step = flops.train_step_flops(config, size)
  assert step["total"] == 3 * sum(forward.values())
  t = frame_lengths(320_000, config)
  assert t == 999  # floor((320000 - 400) / 320) + 1
  # 24 layers x (4 D^2 + 2 D F) weights: 2 FLOPs per weight per frame.
  layer_weights = 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)
  assert forward["attention_projections"] + forward["feed_forward"] == 2 * 4 * t * layer_weights
  assert forward["contrastive_logits"] == 2 * 4 * 490 * 101 * 768
  # The Transformer dominates XLS-R: matmuls over T frames, scores over T^2.
  assert step["attention_projections"] + step["feed_forward"] > 0.6 * step["total"]
  doubled = flops.forward_flops(config, dataclasses.replace(size, batch=8))
  assert all(doubled[k] == 2 * forward[k] for k in forward)


def test_device_table_lookup():
  v5p = devices.lookup("TPU v5")
  assert v5p.peak_flops == 459e12 and v5p.hbm_bytes == 95 * 2**30
  assert devices.lookup("TPU v5 lite").peak_flops == 197e12
  assert devices.lookup("NVIDIA H100 80GB HBM3").peak_flops == 989e12
  with pytest.raises(KeyError, match="TPU v99.*peak_tflops_per_device"):
    devices.lookup("TPU v99")
  assert devices.peak_flops_per_device("TPU v99", override_tflops=100.0) == 100e12
