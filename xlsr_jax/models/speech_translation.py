"""Speech translation: the wav2vec2 encoder, Hugging Face's convolutional length adapter and an
mBART-shaped text decoder (`transformers.SpeechEncoderDecoderModel` with a Wav2Vec2Model whose
config has add_adapter=True, and an MBartForCausalLM).

Shapes: waveform [batch, samples], padding_mask bool [batch, samples] (True = padded);
encoder frames T = floor((samples - 400) / 320) + 1, after the adapter T' = floor((T - 1) / s) + 1
per adapter layer (s = adapter_stride; 3 layers of stride 2 give one vector per 160 ms);
decoder tokens int [batch, length]; logits float32 [batch, length, vocab].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models.config import Wav2Vec2Config, get_preset
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.models.layers import Dense, LayerNorm, partitioned, torch_linear_uniform
from xlsr_jax.models.text_decoder import DecoderConfig, TextDecoder, get_decoder_preset
from xlsr_jax.models.wav2vec2 import Wav2Vec2Model


@dataclasses.dataclass(frozen=True)
class SpeechTranslationConfig:
  """Encoder + adapter + decoder. Adapter fields follow transformers' Wav2Vec2Config.

  output_hidden_size: the adapter's width (0 = the encoder's hidden_size; otherwise a Linear +
  LayerNorm projects to it first). When the adapter's width differs from the decoder's d_model, a
  Linear `enc_to_dec_proj` maps it (SpeechEncoderDecoderModel does the same).

  ctc_vocab_size: > 0 adds an auxiliary CTC head `ctc_head` (Linear over the encoder's frames,
  before the adapter) predicting the source transcript: joint CTC/attention training as in ESPnet-ST
  and fairseq S2T. Training only: not part of the reference architecture, exports drop it.
  """
  encoder: Wav2Vec2Config
  decoder: DecoderConfig
  add_adapter: bool = True
  num_adapter_layers: int = 3
  adapter_kernel_size: int = 3
  adapter_stride: int = 2
  output_hidden_size: int = 0
  ctc_vocab_size: int = 0

  def __post_init__(self):
    if self.add_adapter and (self.num_adapter_layers < 1 or self.adapter_stride < 1
                             or self.adapter_kernel_size < 1):
      raise ValueError(f"adapter needs num_adapter_layers, adapter_kernel_size, adapter_stride >= 1, "
                       f"got {self.num_adapter_layers}, {self.adapter_kernel_size}, {self.adapter_stride}")

  @property
  def adapter_width(self) -> int:
    return self.output_hidden_size or self.encoder.hidden_size

  @property
  def needs_projection(self) -> bool:
    return self.adapter_width != self.decoder.d_model

  def replace(self, **changes) -> "SpeechTranslationConfig":
    return dataclasses.replace(self, **changes)


def translation_preset(encoder_preset: str, decoder_preset: str, *, encoder: dict | None = None,
                       decoder: dict | None = None, **adapter) -> SpeechTranslationConfig:
  """E.g. ("tiny", "tiny") for tests, ("xlsr_300m", "mbart_large") for the paper's model."""
  return SpeechTranslationConfig(get_preset(encoder_preset, **(encoder or {})),
                                 get_decoder_preset(decoder_preset, **(decoder or {})), **adapter)


def adapter_lengths(frame_lengths_: jax.Array, config: SpeechTranslationConfig) -> jax.Array:
  """Valid adapter outputs per utterance from valid encoder frames (HF: kernel-1 formula)."""
  length = frame_lengths_
  if config.add_adapter:
    for _ in range(config.num_adapter_layers):
      length = jnp.maximum((length - 1) // config.adapter_stride + 1, 0)
  return length


class ConvAdapter(nn.Module):
  """[Linear + LayerNorm to output_hidden_size], then per layer Conv1d(width -> 2 width, kernel k,
  stride s, padding 1) and a GLU over channels: [batch, frames, hidden] -> [batch, frames', width].
  (HF's Wav2Vec2Adapter. Its training-time layerdrop over adapter layers is left out on purpose:
  skipping a stride-2 layer changes the output length, which static shapes cannot follow and which
  HF's own padding-mask formula does not follow either.)"""
  config: SpeechTranslationConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, enc = self.config, self.config.encoder
    width = cfg.adapter_width
    if width != enc.hidden_size:
      x = Dense(width, ("embed", "mlp"), kernel_init=torch_linear_uniform(enc.hidden_size),
                dtype=enc.dtype, param_dtype=enc.param_dtype, name="proj")(x)
      x = LayerNorm(axis_name="mlp", epsilon=1e-5, dtype=enc.dtype, param_dtype=enc.param_dtype,
                    name="proj_layer_norm")(x)
    k = cfg.adapter_kernel_size
    for i in range(cfg.num_adapter_layers):
      kernel = self.param(f"conv_{i}_kernel", partitioned(torch_linear_uniform(width * k),
                                                          ("conv_width", "embed", "mlp")),
                          (k, width, 2 * width), enc.param_dtype)
      bias = self.param(f"conv_{i}_bias", partitioned(torch_linear_uniform(width * k), ("mlp",)),
                        (2 * width,), enc.param_dtype)
      y = jax.lax.conv_general_dilated(
          x.astype(enc.dtype), kernel.astype(enc.dtype), window_strides=(cfg.adapter_stride,),
          padding=[(1, 1)], dimension_numbers=("NWC", "WIO", "NWC")) + bias.astype(enc.dtype)
      x = y[..., :width] * jax.nn.sigmoid(y[..., width:])
      x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    return x


class SpeechToText(nn.Module):
  """Wav2Vec2Model -> ConvAdapter -> [enc_to_dec_proj] -> TextDecoder (cross-attending with the
  adapter-frame padding mask). Methods: `encode`, `decode`, and `__call__` (teacher forcing).

  Parameters: {"wav2vec2", "adapter", ["enc_to_dec_proj"], "decoder"}.
  """
  config: SpeechTranslationConfig

  def setup(self):
    cfg = self.config
    self.wav2vec2 = Wav2Vec2Model(cfg.encoder)
    if cfg.add_adapter:
      self.adapter = ConvAdapter(cfg)
    if cfg.needs_projection:
      self.enc_to_dec_proj = Dense(
          cfg.decoder.d_model, ("embed", "mlp"), kernel_init=torch_linear_uniform(cfg.adapter_width),
          dtype=cfg.encoder.dtype, param_dtype=cfg.encoder.param_dtype)
    self.decoder = TextDecoder(cfg.decoder)
    if cfg.ctc_vocab_size:
      self.ctc_head = Dense(
          cfg.ctc_vocab_size, ("embed", "vocab"), kernel_init=torch_linear_uniform(
              cfg.encoder.hidden_size), dtype=cfg.encoder.dtype, param_dtype=cfg.encoder.param_dtype)

  def encode(self, waveform: jax.Array, padding_mask: jax.Array | None = None, *,
             mask_time: jax.Array | None = None, channel_mask: jax.Array | None = None,
             deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """(states [batch, frames', d_model], valid bool [batch, frames'])."""
    out = self.wav2vec2(waveform, padding_mask, mask_time=mask_time, channel_mask=channel_mask,
                        deterministic=deterministic)
    return self._adapt(out["last_hidden_state"], padding_mask)

  def _adapt(self, x: jax.Array, padding_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Encoder frames [batch, frames, hidden] -> (decoder memory [batch, frames', d_model], valid)."""
    cfg = self.config
    if cfg.add_adapter:
      x = self.adapter(x)
    if cfg.needs_projection:
      x = self.enc_to_dec_proj(x)
    if padding_mask is None:
      valid = jnp.ones(x.shape[:2], bool)
    else:
      lengths = adapter_lengths(frame_lengths(jnp.sum(~padding_mask, axis=-1), cfg.encoder), cfg)
      valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    return x, valid

  def decode(self, tokens: jax.Array, states: jax.Array | None, valid: jax.Array, *,
             cache: dict | None = None, index: jax.Array | int = 0,
             deterministic: bool = True) -> tuple[jax.Array, dict | None]:
    """TextDecoder.__call__: (logits float32 [batch, t, vocab], new cache or None)."""
    return self.decoder(tokens, states, valid, cache=cache, index=index, deterministic=deterministic)

  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None = None,
               decoder_input_ids: jax.Array | None = None, *, mask_time: jax.Array | None = None,
               channel_mask: jax.Array | None = None, deterministic: bool = True) -> dict[str, Any]:
    """Teacher forcing: {"logits" [batch, length, vocab], "encoder_states", "encoder_valid"}, and
    with a CTC head "ctc_logits" float32 [batch, frames, ctc_vocab] + "frame_valid" bool
    [batch, frames]. Without decoder_input_ids, the start token alone (what `init` needs)."""
    cfg = self.config
    if decoder_input_ids is None:
      decoder_input_ids = jnp.full((waveform.shape[0], 1), cfg.decoder.decoder_start_token_id,
                                   jnp.int32)
    out = self.wav2vec2(waveform, padding_mask, mask_time=mask_time, channel_mask=channel_mask,
                        deterministic=deterministic)
    states, valid = self._adapt(out["last_hidden_state"], padding_mask)
    logits, _ = self.decode(decoder_input_ids, states, valid, deterministic=deterministic)
    result = {"logits": logits, "encoder_states": states, "encoder_valid": valid}
    if cfg.ctc_vocab_size:
      frames = out["last_hidden_state"]
      result["ctc_logits"] = self.ctc_head(frames).astype(jnp.float32)
      result["frame_valid"] = (jnp.ones(frames.shape[:2], bool) if out["frame_valid"] is None
                               else out["frame_valid"])
    return result


def shift_tokens_right(labels: jax.Array, pad_token_id: int, decoder_start_token_id: int) -> jax.Array:
  """Decoder inputs from labels [batch, length] (-100 = ignored): start token, then labels[:-1],
  with -100 replaced by the pad id (transformers' speech_encoder_decoder.shift_tokens_right)."""
  shifted = jnp.concatenate([jnp.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], 1)
  return jnp.where(shifted == -100, pad_token_id, shifted)


def label_smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0,
                                 ignore_index: int = -100) -> tuple[jax.Array, jax.Array]:
  """(mean loss over non-ignored tokens, their count): logits [b, t, V] float, labels int [b, t].

  Per token (1 - eps) * NLL + eps * mean_v(-log p_v): torch `cross_entropy(label_smoothing=eps)`
  and transformers' LabelSmoother (fairseq's label_smoothed_cross_entropy spreads eps over V - 1
  classes instead: a slightly different constant).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  smooth = -jnp.mean(log_probs, axis=-1)
  per = (1.0 - smoothing) * nll + smoothing * smooth
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(count, 1), count
