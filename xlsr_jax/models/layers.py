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


def grouped_conv1d(x: jax.Array, kernel: jax.Array, padding: int, groups: int) -> jax.Array:
  """Stride-1 grouped temporal convolution: x [batch, time, in], kernel [width, in // groups, out]
  -> [batch, time + 2 * padding - width + 1, out] (XLA's convolution, same numerics everywhere).

  Its weight gradient is computed differently on CPU: XLA:CPU lowers the transposed grouped
  convolution to a slow generic loop (jax 0.10.2: 6.2 s of a 19 s wav2vec2-base train step at
  batch 4 x 4 s, for 3.8 GFLOP), so there it is one small batched matmul per kernel position
  (`lax.map` over the width; 0.45 s). Other platforms keep the compiler's own transpose.
  """
  return _grouped_conv1d(x, kernel, padding, groups)


def _grouped_conv(x, kernel, padding, groups):
  return jax.lax.conv_general_dilated(x, kernel, window_strides=(1,), padding=[(padding, padding)],
                                      dimension_numbers=("NWC", "WIO", "NWC"),
                                      feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _grouped_conv1d(x, kernel, padding, groups):
  return _grouped_conv(x, kernel, padding, groups)


def _grouped_conv1d_fwd(x, kernel, padding, groups):
  return _grouped_conv(x, kernel, padding, groups), (x, kernel)


def _kernel_grad_by_matmuls(x, kernel, dy, padding, groups):
  """d kernel [width, in_g, out] = sum over batch, time of x_padded[t + k, g, i] * dy[t, g, j]."""
  width, in_g, out = kernel.shape
  batch, frames = dy.shape[:2]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (0, 0))).reshape(batch, -1, groups, in_g)
  dy = dy.reshape(batch, frames, groups, out // groups)

  def at(k):  # [in_g, groups, out_g] for kernel position k
    return jnp.einsum("btgi,btgj->igj", jax.lax.dynamic_slice_in_dim(xp, k, frames, 1), dy,
                      preferred_element_type=jnp.float32)
  return jax.lax.map(at, jnp.arange(width)).reshape(width, in_g, out).astype(kernel.dtype)


def _kernel_grad_by_conv(x, kernel, dy, padding, groups):
  return jax.vjp(lambda w: _grouped_conv(x, w, padding, groups), kernel)[1](dy)[0]


def _grouped_conv1d_bwd(padding, groups, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _grouped_conv(x, kernel, padding, groups), x)[1](dy)[0]
  dkernel = jax.lax.platform_dependent(
      x, kernel, dy, cpu=functools.partial(_kernel_grad_by_matmuls, padding=padding, groups=groups),
      default=functools.partial(_kernel_grad_by_conv, padding=padding, groups=groups))
  return dx, dkernel


_grouped_conv1d.defvjp(_grouped_conv1d_fwd, _grouped_conv1d_bwd)
