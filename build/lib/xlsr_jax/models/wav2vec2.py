"""wav2vec 2.0 / XLS-R: the encoder (`Wav2Vec2Model`) and the pretraining model with its quantizer.

Shapes: waveform [batch, samples] float; padding_mask [batch, samples] bool, True = padded sample
(right padding), or instead frame_lengths int [batch] (real frames per row, as the pretraining
step has them); frames T = floor((samples - 400) / 320) + 1 for the standard feature encoder.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.feature_encoder import FeatureEncoder, FeatureProjection, frame_lengths
from xlsr_jax.models.layers import Dense, partitioned, scale_gradient, uniform01
from xlsr_jax.models.quantizer import GumbelVectorQuantizer
from xlsr_jax.models.transformer import TransformerEncoder


def frame_valid_mask(padding_mask: jax.Array | None, num_frames: int, config: Wav2Vec2Config,
                     lengths: jax.Array | None = None) -> jax.Array | None:
  """bool [batch, frames]: True for frames whose receptive field lies inside the unpadded audio.

  From the rows' frame `lengths` int [batch] when the caller has them (the pretraining step),
  else from `padding_mask` (downstream and parity callers); None when neither is given.
  """
  if lengths is None:
    if padding_mask is None:
      return None
    lengths = frame_lengths(jnp.sum(~padding_mask, axis=-1), config)
  return jnp.arange(num_frames)[None, :] < lengths[:, None]


def gather_frames(x: jax.Array, indices: jax.Array) -> jax.Array:
  """x [batch, frames, dim], indices int [batch, M] -> [batch, M, dim]."""
  return jnp.take_along_axis(x, indices[..., None], axis=1)


class Wav2Vec2Model(nn.Module):
  """The encoder: feature encoder, projection, optional time/channel masking, Transformer.

  Returns a dict: last_hidden_state [batch, frames, hidden]; layer_outputs [layers, batch, frames,
  hidden] and layer_input [batch, frames, hidden], the input of the first layer (only if
  return_layer_outputs, else None); extract_features (LayerNorm'd conv features
  [batch, frames, conv_dim]); raw_features (before that LayerNorm); frame_valid [batch, frames]
  or None.
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None = None, *,
               frame_lengths: jax.Array | None = None, mask_time: jax.Array | None = None,
               channel_mask: jax.Array | None = None, deterministic: bool = True,
               return_layer_outputs: bool = False) -> dict[str, Any]:
    cfg = self.config
    raw = FeatureEncoder(cfg, name="feature_extractor")(waveform)
    if cfg.feature_grad_mult == 0.0:
      raw = jax.lax.stop_gradient(raw)
    elif cfg.feature_grad_mult != 1.0:
      raw = scale_gradient(raw, cfg.feature_grad_mult)
    frame_valid = frame_valid_mask(padding_mask, raw.shape[1], cfg, frame_lengths)
    hidden, normed = FeatureProjection(cfg, name="feature_projection")(raw, deterministic)
    masked_spec_embed = self.param("masked_spec_embed", partitioned(uniform01, ("embed",)),
                                   (cfg.hidden_size,), cfg.param_dtype)
    if mask_time is not None:
      hidden = jnp.where(mask_time[..., None], masked_spec_embed.astype(hidden.dtype), hidden)
    if channel_mask is not None:
      hidden = jnp.where(channel_mask[:, None, :], jnp.zeros((), hidden.dtype), hidden)
    hidden = nn.with_logical_constraint(hidden, ("activation_batch", "activation_length",
                                                 "activation_embed"))
    last, layer_outputs, layer_input = TransformerEncoder(cfg, name="encoder")(
        hidden, frame_valid, deterministic, return_layer_outputs)
    return dict(last_hidden_state=last, layer_outputs=layer_outputs, layer_input=layer_input,
                extract_features=normed,
                raw_features=raw, frame_valid=frame_valid)


class Wav2Vec2ForPreTraining(nn.Module):
  """Encoder + Gumbel quantizer + the two projections of the contrastive task.

  mask_time bool [batch, frames] marks masked frames; masked_indices int [batch, M] lists them
  (static M, see objectives.masking). Returns a dict with context [batch, M, final_dim] (projected
  Transformer output at the masked frames), targets [batch, M, final_dim] (projected quantized
  vectors of the unmasked features at the same frames, not detached), soft_probs [batch, M, G, V],
  code_indices [batch, M, G], raw_features, frame_valid and the encoder's last_hidden_state.
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None, mask_time: jax.Array,
               masked_indices: jax.Array, *, frame_lengths: jax.Array | None = None,
               temperature: float | jax.Array = 2.0, deterministic: bool = True,
               gumbel_noise: jax.Array | None = None) -> dict[str, Any]:
    cfg = self.config
    out = Wav2Vec2Model(cfg, name="wav2vec2")(waveform, padding_mask, frame_lengths=frame_lengths,
                                             mask_time=mask_time, deterministic=deterministic)
    features = nn.Dropout(cfg.feat_quantizer_dropout)(out["extract_features"],
                                                      deterministic=deterministic)
    quantized, soft_probs, code_indices = GumbelVectorQuantizer(cfg, name="quantizer")(
        gather_frames(features, masked_indices), temperature, deterministic, gumbel_noise)
    targets = Dense(cfg.proj_codevector_dim, ("codevector", "final_dim"), dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="project_q")(quantized)
    context = Dense(cfg.proj_codevector_dim, ("embed", "final_dim"), dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="project_hid")(
                        gather_frames(out["last_hidden_state"], masked_indices))
    return dict(context=context, targets=targets, soft_probs=soft_probs, code_indices=code_indices,
                raw_features=out["raw_features"], frame_valid=out["frame_valid"],
                last_hidden_state=out["last_hidden_state"])
