"""Small building blocks shared by the model files: partitioned initialisers, Dense, LayerNorm, GELU."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def partitioned(init: Initializer, names: Sequence[str | None]) -> Initializer:
  """Wraps an initializer so the parameter carries logical axis names (for the sharding rules)."""
  return nn.with_logical_partitioning(init, tuple(names))


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU used by wav2vec 2.0."""
  return jax.nn.gelu(x, approximate=False)


def torch_linear_uniform(fan_in: int) -> Initializer:
  """PyTorch's default Linear/Conv initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def uniform01(key, shape, dtype=jnp.float32):
  """U[0, 1): the mask embedding and codebook initialisation."""
  return jax.random.uniform(key, shape, dtype)


class Dense(nn.Module):
  """y = x @ kernel + bias over the last axis, with logical axis names on both parameters.

  x: [..., in_features] -> [..., features].
  """
  features: int
  kernel_axes: tuple[str | None, str | None]
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.normal(0.02)
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", partitioned(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", partitioned(self.bias_init, self.kernel_axes[1:]),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32, output in `dtype`; params named `axis`."""
  axis_name: str | None = "embed"
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    scale = self.param("scale", partitioned(nn.initializers.ones, (self.axis_name,)), (dim,),
                       self.param_dtype)
    bias = self.param("bias", partitioned(nn.initializers.zeros, (self.axis_name,)), (dim,),
                      self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


@jax.custom_vjp
def scale_gradient(x: jax.Array, multiplier: float) -> jax.Array:
  """Identity in the forward pass; multiplies the gradient by `multiplier` (fairseq GradMultiply)."""
  return x


def _scale_gradient_fwd(x, multiplier):
  return x, multiplier


def _scale_gradient_bwd(multiplier, g):
  return (g * multiplier, None)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def cpu_or_xla(cpu_fn: Callable[..., Any], xla_fn: Callable[..., Any], *args: jax.Array) -> Any:
  """`cpu_fn(*args)` in a program lowered for CPU, else `xla_fn(*args)`: the one switch for CPU kernels.

  Some programs XLA:CPU compiles badly get a CPU-only replacement; the choice is made by the
  platform the program is lowered for (`jax.lax.platform_dependent`), not the host's, so an
  ahead-of-time TPU compile on a CPU machine (python -m xlsr_jax.plan) gets the TPU program, and
  a TPU or GPU program holds only `xla_fn`'s plain XLA (the CPU branch is not lowered). Both
  branches must compute the same values and gradients (tests/test_models.py checks each kernel).
  Today's CPU kernel: `grouped_conv1d`'s weight gradient.
  """
  return jax.lax.platform_dependent(*args, cpu=cpu_fn, default=xla_fn)


def grouped_conv1d(x: jax.Array, kernel: jax.Array, padding: int, groups: int) -> jax.Array:
  """Stride-1 grouped temporal convolution: x [batch, time, in], kernel [width, in // groups, out]
  -> [batch, time + 2 * padding - width + 1, out]; XLA's convolution (and its autodiff) on TPU and
  GPU, `grouped_conv1d_cpu` on CPU (see `cpu_or_xla`)."""
  return cpu_or_xla(functools.partial(grouped_conv1d_cpu, padding=padding, groups=groups),
                    functools.partial(grouped_conv1d_xla, padding=padding, groups=groups),
                    x, kernel)


def grouped_conv1d_xla(x: jax.Array, kernel: jax.Array, padding: int, groups: int) -> jax.Array:
  """`grouped_conv1d` as one XLA convolution, differentiated by JAX (the TPU / GPU program)."""
  return jax.lax.conv_general_dilated(x, kernel, window_strides=(1,), padding=[(padding, padding)],
                                      dimension_numbers=("NWC", "WIO", "NWC"),
                                      feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_conv1d_cpu(x: jax.Array, kernel: jax.Array, padding: int, groups: int) -> jax.Array:
  """`grouped_conv1d` with a CPU-friendly weight gradient (same values as `grouped_conv1d_xla`).

  XLA:CPU lowers the transposed grouped convolution to a slow generic loop (jax 0.10.2: 6.2 s of
  a 19 s wav2vec2-base train step at batch 4 x 4 s, for 3.8 GFLOP), so the weight gradient is one
  small batched matmul per kernel position (`lax.map` over the width; 0.45 s).
  """
  return grouped_conv1d_xla(x, kernel, padding, groups)


def _grouped_conv1d_cpu_fwd(x, kernel, padding, groups):
  return grouped_conv1d_xla(x, kernel, padding, groups), (x, kernel)


def _grouped_conv1d_cpu_bwd(padding, groups, residuals, dy):
  """dx by XLA's own transpose; d kernel [width, in_g, out] = sum over batch and time of
  x_padded[t + k, g, i] * dy[t, g, j], one einsum per kernel position k."""
  x, kernel = residuals
  dx = jax.vjp(lambda x: grouped_conv1d_xla(x, kernel, padding, groups), x)[1](dy)[0]
  width, in_g, out = kernel.shape
  batch, frames = dy.shape[:2]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (0, 0))).reshape(batch, -1, groups, in_g)
  dy_g = dy.reshape(batch, frames, groups, out // groups)

  def at(k):  # [in_g, groups, out_g] for kernel position k
    return jnp.einsum("btgi,btgj->igj", jax.lax.dynamic_slice_in_dim(xp, k, frames, 1), dy_g,
                      preferred_element_type=jnp.float32)
  dkernel = jax.lax.map(at, jnp.arange(width)).reshape(width, in_g, out).astype(kernel.dtype)
  return dx, dkernel


grouped_conv1d_cpu.defvjp(_grouped_conv1d_cpu_fwd, _grouped_conv1d_cpu_bwd)
