"""Downstream heads on the encoder: pooling, SUPERB layer weighting, utterance classifier, CTC.

Shapes: hidden states [layers + 1, batch, frames, dim] (see encoders.hidden_states_from_output),
frame_valid bool [batch, frames]. Every parameter carries logical axis names and is stored in
`param_dtype`, computed in `dtype`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models import Wav2Vec2Model
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.layers import Dense, partitioned

POOLINGS = ("mean", "mean_std")


def masked_mean(x: jax.Array, frame_valid: jax.Array | None) -> jax.Array:
  """Mean over non-padded frames: x [..., batch, frames, dim] -> [..., batch, dim] (float32)."""
  x = x.astype(jnp.float32)
  if frame_valid is None:
    return jnp.mean(x, axis=-2)
  w = frame_valid.astype(jnp.float32)[..., None]  # [batch, frames, 1], broadcasts over leading axes
  return jnp.sum(x * w, axis=-2) / jnp.maximum(jnp.sum(w, axis=-2), 1.0)


def masked_mean_std(x: jax.Array, frame_valid: jax.Array | None) -> jax.Array:
  """[mean, std] over non-padded frames: [..., batch, frames, dim] -> [..., batch, 2 * dim]."""
  mean = masked_mean(x, frame_valid)
  var = masked_mean(jnp.square(x.astype(jnp.float32) - mean[..., None, :]), frame_valid)
  return jnp.concatenate([mean, jnp.sqrt(var + 1e-5)], axis=-1)


def pool(x: jax.Array, frame_valid: jax.Array | None, pooling: str) -> jax.Array:
  """Utterance statistics over non-padded frames, pooling "mean" or "mean_std"."""
  if pooling == "mean":
    return masked_mean(x, frame_valid)
  if pooling == "mean_std":
    return masked_mean_std(x, frame_valid)
  raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")


class LayerWeightedSum(nn.Module):
  """SUPERB: softmax(w) weighted sum over the layer axis: [layers, ...] -> [...] (float32).

  w [layers] starts at zero (equal weights); logical axis "layers".
  """
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weights = self.param("layer_weights", partitioned(nn.initializers.zeros, ("layers",)),
                         (x.shape[0],), self.param_dtype)
    probs = jax.nn.softmax(weights.astype(jnp.float32))
    return jnp.tensordot(probs, x.astype(jnp.float32), axes=(0, 0))


class UtteranceClassifier(nn.Module):
  """Per-layer pooled statistics [layers + 1, batch, P] -> logits [batch, num_classes].

  With `standardize` each layer's statistics are first standardised by fixed per-feature
  `feature_mean` / `feature_scale` [layers + 1, P] (set by the L-BFGS probe from the training
  features; initialised to 0 and 1). Then the layers are combined: concatenated ([batch,
  (layers + 1) * P], `concat_layers`), mixed by `LayerWeightedSum` (SUPERB, `layer_weighting`),
  or only the last entry (the encoder output) is used. Then an optional projection (HF
  classifier_proj_size; 0 = none) and a linear layer. Pooling before combining makes the head a
  function of per-utterance statistics, so a frozen-encoder probe can cache them (for mean
  pooling weighting equals pooling the weighted sum exactly).
  """
  num_classes: int
  layer_weighting: bool = True
  projection_dim: int = 0
  concat_layers: bool = False
  standardize: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled_lbp: jax.Array) -> jax.Array:
    if self.concat_layers and self.layer_weighting:
      raise ValueError("UtteranceClassifier: concat_layers and layer_weighting exclude each other")
    x = pooled_lbp.astype(jnp.float32)
    if self.standardize:
      shape = (x.shape[0], x.shape[-1])
      mean = self.param("feature_mean", partitioned(nn.initializers.zeros, ("layers", "embed")),
                        shape, self.param_dtype)
      scale = self.param("feature_scale", partitioned(nn.initializers.ones, ("layers", "embed")),
                         shape, self.param_dtype)
      x = (x - mean[:, None].astype(jnp.float32)) / scale[:, None].astype(jnp.float32)
    if self.concat_layers:
      x = jnp.transpose(x, (1, 0, 2)).reshape(x.shape[1], -1)
    elif self.layer_weighting:
      x = LayerWeightedSum(self.param_dtype, name="layer_weights")(x)
    else:
      x = x[-1]
    if self.projection_dim:
      x = Dense(self.projection_dim, ("embed", "mlp"), dtype=self.dtype,
                param_dtype=self.param_dtype, name="projector")(x)
    logits = Dense(self.num_classes, ("embed", "classes"), dtype=self.dtype,
                   param_dtype=self.param_dtype, name="classifier")(x)
    return logits.astype(jnp.float32)


def stack_hidden_states(out: dict[str, Any]) -> jax.Array:
  """[layers + 1, batch, frames, dim] from a Wav2Vec2Model output run with return_layer_outputs.

  Entry 0 is the input of the first Transformer layer; entry i the output of layer i; the last
  entry is the encoder output `last_hidden_state` (after the final LayerNorm of the pre-LN
  variant, what a head sees), as transformers 4.x's `hidden_states`.
  """
  layers = out["layer_outputs"]
  return jnp.concatenate([out["layer_input"][None].astype(layers.dtype), layers[:-1],
                          out["last_hidden_state"][None].astype(layers.dtype)], axis=0)


class Wav2Vec2ForUtteranceClassification(nn.Module):
  """Encoder + per-layer pooling + UtteranceClassifier: waveform -> logits [batch, num_classes].

  `freeze_encoder` stops gradients at the hidden states (a linear probe); the optimizer also
  leaves the encoder's parameters unchanged then.
  """
  config: Wav2Vec2Config
  num_classes: int
  pooling: str = "mean"
  layer_weighting: bool = True
  projection_dim: int = 0
  freeze_encoder: bool = False
  concat_layers: bool = False
  standardize: bool = False

  @nn.compact
  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None = None, *,
               mask_time: jax.Array | None = None, channel_mask: jax.Array | None = None,
               deterministic: bool = True) -> dict[str, Any]:
    out = Wav2Vec2Model(self.config, name="wav2vec2")(
        waveform, padding_mask, mask_time=mask_time, channel_mask=channel_mask,
        deterministic=deterministic, return_layer_outputs=True)
    hidden = stack_hidden_states(out)
    if self.freeze_encoder:
      hidden = jax.lax.stop_gradient(hidden)
    pooled = pool(hidden, out["frame_valid"], self.pooling)
    logits = UtteranceClassifier(self.num_classes, self.layer_weighting, self.projection_dim,
                                 self.concat_layers, self.standardize, dtype=self.config.dtype,
                                 param_dtype=self.config.param_dtype,
                                 name="head")(pooled)
    return dict(logits=logits, pooled=pooled, frame_valid=out["frame_valid"])


class Wav2Vec2ForCTC(nn.Module):
  """Encoder + dropout + linear CTC head `lm_head` (as transformers' Wav2Vec2ForCTC).

  waveform [batch, samples], padding_mask [batch, samples] (True = padded) -> dict(logits
  [batch, frames, vocab_size] float32, frame_valid [batch, frames] or None, last_hidden_state).
  """
  config: Wav2Vec2Config
  vocab_size: int
  final_dropout: float = 0.0

  @nn.compact
  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None = None, *,
               mask_time: jax.Array | None = None, channel_mask: jax.Array | None = None,
               deterministic: bool = True) -> dict[str, Any]:
    cfg = self.config
    out = Wav2Vec2Model(cfg, name="wav2vec2")(waveform, padding_mask, mask_time=mask_time,
                                              channel_mask=channel_mask, deterministic=deterministic)
    hidden = nn.Dropout(self.final_dropout)(out["last_hidden_state"], deterministic=deterministic)
    logits = Dense(self.vocab_size, ("embed", "vocab"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                   name="lm_head")(hidden)
    return dict(logits=logits.astype(jnp.float32), frame_valid=out["frame_valid"],
                last_hidden_state=out["last_hidden_state"])
