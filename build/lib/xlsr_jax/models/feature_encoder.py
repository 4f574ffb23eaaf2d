"""The convolutional feature encoder (waveform -> 20 ms frames) and the feature projection."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.layers import Dense, LayerNorm, gelu, partitioned, torch_linear_uniform


class ConvLayer(nn.Module):
  """One temporal convolution (+ optional norm) + GELU: [batch, time, in] -> [batch, time', out].

  norm: "layer" (LayerNorm over channels), "group" (GroupNorm with one group per channel, i.e.
  per-channel normalisation over time, as wav2vec2 base's first layer) or "none".
  """
  features: int
  kernel_size: int
  stride: int
  use_bias: bool
  norm: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param(
        "kernel", partitioned(nn.initializers.variance_scaling(2.0, "fan_in", "normal",
                                                                in_axis=(0, 1), out_axis=2),
                              ("conv_width", "conv_in", "conv_out")),
        (self.kernel_size, in_features, self.features), self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(self.stride,),
        padding="VALID", dimension_numbers=("NWC", "WIO", "NWC"))
    if self.use_bias:
      bias = self.param("bias", partitioned(torch_linear_uniform(in_features * self.kernel_size),
                                            ("conv_out",)), (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.norm == "layer":
      y = LayerNorm(axis_name="conv_out", epsilon=1e-5, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="layer_norm")(y)
    elif self.norm == "group":
      scale = self.param("norm_scale", partitioned(nn.initializers.ones, ("conv_out",)),
                         (self.features,), self.param_dtype)
      shift = self.param("norm_bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                         (self.features,), self.param_dtype)
      y32 = y.astype(jnp.float32)
      mean = jnp.mean(y32, axis=1, keepdims=True)
      var = jnp.mean(jnp.square(y32 - mean), axis=1, keepdims=True)
      y = ((y32 - mean) * jax.lax.rsqrt(var + 1e-5) * scale + shift).astype(self.dtype)
    return gelu(y)


class FeatureEncoder(nn.Module):
  """7 strided convolutions: waveform [batch, samples] -> raw features [batch, frames, conv_dim[-1]]."""
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, waveform: jax.Array) -> jax.Array:
    cfg = self.config
    x = waveform[..., None]
    for i, (dim, kernel, stride) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
      if cfg.feat_extract_norm == "layer":
        norm = "layer"
      else:
        norm = "group" if i == 0 else "none"
      x = ConvLayer(dim, kernel, stride, cfg.conv_bias, norm, dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name=f"conv_{i}")(x)
      x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_conv"))
    return x


class FeatureProjection(nn.Module):
  """LayerNorm(conv_dim) then Linear conv_dim -> hidden and dropout.

  Returns (hidden [batch, frames, hidden], normalised features [batch, frames, conv_dim]); the
  normalised features are what the quantizer sees.
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, features: jax.Array, deterministic: bool) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    normed = LayerNorm(axis_name="conv_out", epsilon=cfg.layer_norm_eps, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, name="layer_norm")(features)
    in_dim = features.shape[-1]
    hidden = Dense(cfg.hidden_size, ("conv_out", "embed"),
                   kernel_init=torch_linear_uniform(in_dim), bias_init=torch_linear_uniform(in_dim),
                   dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="projection")(normed)
    hidden = nn.Dropout(cfg.feat_proj_dropout)(hidden, deterministic=deterministic)
    return hidden, normed


def conv_lengths(num_samples, config: Wav2Vec2Config) -> list:
  """Length after each feature-encoder convolution: floor((L - k) / s) + 1 per layer, never below 0.

  The one frame-length formula (model, masking, validation, FLOPs and plan use it). Python ints
  give ints (static shapes); integer arrays, e.g. per-row lengths [batch] (traced or not), give
  jax arrays.
  """
  static = isinstance(num_samples, (int, np.integer))
  length, out = int(num_samples) if static else num_samples, []
  for kernel, stride in zip(config.conv_kernel, config.conv_stride):
    length = (length - kernel) // stride + 1
    length = max(length, 0) if static else jnp.maximum(length, 0)
    out.append(length)
  return out


def frame_lengths(num_samples, config: Wav2Vec2Config):
  """Frames of `num_samples` samples (an int or an int array [batch]): the last `conv_lengths`."""
  return conv_lengths(num_samples, config)[-1]
