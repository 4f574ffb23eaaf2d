"""An mBART-shaped Transformer text decoder (pre-LN) with cross-attention and a key/value cache.

Matches `transformers.MBartForCausalLM` (the decoder of the XLS-R speech-translation models):
token embedding (x sqrt(d_model) when scale_embedding), learned positions with mBART's offset of 2,
layernorm_embedding, pre-LN layers (self-attention, cross-attention, FFN), a final LayerNorm and an
output projection tied to the token embedding (tie_word_embeddings) or a separate `lm_head`.
The layers are one `nn.scan` (leading logical axis "layers"), like the encoder's.

Shapes: tokens int [batch, length]; encoder states [batch, frames, d_model] with encoder_valid
bool [batch, frames]; logits float32 [batch, length, vocab]. Decoding with a cache: `init_cache`
gives zero buffers [layers, batch, max_length, heads, head_dim] (self-attention) and
[layers, batch, frames, heads, head_dim] (cross-attention); the first cached call passes the
encoder states (their keys/values are computed once and stored), later calls pass None.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models.layers import Dense, LayerNorm, gelu, partitioned

ACTIVATIONS = ("gelu", "relu")
POSITION_OFFSET = 2  # mBART's learned positions are stored from row 2 (fairseq padding_idx + 1)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Sizes and switches of the decoder; field names follow transformers' `MBartConfig`."""
  vocab_size: int = 250_054
  d_model: int = 1024
  decoder_layers: int = 12
  decoder_attention_heads: int = 16
  decoder_ffn_dim: int = 4096
  max_position_embeddings: int = 1024
  activation_function: str = "gelu"
  scale_embedding: bool = True
  tie_word_embeddings: bool = True
  layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default (mBART does not set it)
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  decoder_layerdrop: float = 0.0
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  decoder_start_token_id: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.d_model % self.decoder_attention_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by decoder_attention_heads "
                       f"{self.decoder_attention_heads}")
    if self.activation_function not in ACTIVATIONS:
      raise ValueError(f"activation_function {self.activation_function!r} is not one of {ACTIVATIONS}")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
      if not 0 <= getattr(self, name) < self.vocab_size:
        raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.decoder_attention_heads

  def replace(self, **changes) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # Tests and the CPU demo. Vocabulary from the task's sentencepiece model (set at build time).
    "tiny": DecoderConfig(vocab_size=256, d_model=64, decoder_layers=2, decoder_attention_heads=4,
                          decoder_ffn_dim=128, max_position_embeddings=128, dropout=0.0),
    # facebook/mbart-large-50 (the paper's decoder): 12 x 1024, FFN 4096, 16 heads, vocab 250,054.
    "mbart_large": DecoderConfig(),
}


def get_decoder_preset(name: str, **overrides) -> DecoderConfig:
  """A decoder preset with field overrides; unknown names and fields are errors listing valid ones."""
  if name not in DECODER_PRESETS:
    raise KeyError(f"unknown decoder preset {name!r}; valid presets: {sorted(DECODER_PRESETS)}")
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise KeyError(f"unknown DecoderConfig field(s) {unknown}; valid fields: {sorted(fields)}")
  return DECODER_PRESETS[name].replace(**overrides)


def init_cache(config: DecoderConfig, batch: int, max_length: int, num_frames: int) -> dict:
  """Zero key/value buffers for cached decoding (see the module docstring for the shapes)."""
  heads, head_dim, layers = config.decoder_attention_heads, config.head_dim, config.decoder_layers
  self_shape = (layers, batch, max_length, heads, head_dim)
  cross_shape = (layers, batch, num_frames, heads, head_dim)
  return {"self_k": jnp.zeros(self_shape, config.dtype), "self_v": jnp.zeros(self_shape, config.dtype),
          "cross_k": jnp.zeros(cross_shape, config.dtype),
          "cross_v": jnp.zeros(cross_shape, config.dtype)}


class Attention(nn.Module):
  """Multi-head attention projections (q, k, v, out with biases) and a masked softmax in float32."""
  config: DecoderConfig
  deterministic: bool

  def setup(self):
    cfg = self.config
    heads, head_dim, d = cfg.decoder_attention_heads, cfg.head_dim, cfg.d_model
    proj = lambda: partitioned(nn.initializers.normal(0.02), ("embed", "heads", "kv"))
    bias = lambda: partitioned(nn.initializers.zeros, ("heads", "kv"))
    for name in ("query", "key", "value"):
      setattr(self, f"{name}_kernel", self.param(f"{name}_kernel", proj(), (d, heads, head_dim),
                                                 cfg.param_dtype))
      setattr(self, f"{name}_bias", self.param(f"{name}_bias", bias(), (heads, head_dim),
                                               cfg.param_dtype))
    self.out_kernel = self.param("out_kernel", partitioned(nn.initializers.normal(0.02),
                                                           ("heads", "kv", "embed")),
                                 (heads, head_dim, d), cfg.param_dtype)
    self.out_bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (d,),
                               cfg.param_dtype)
    self.attn_dropout = nn.Dropout(cfg.attention_dropout)

  def project(self, name: str, x: jax.Array) -> jax.Array:
    """x [batch, length, d_model] -> [batch, length, heads, head_dim]."""
    dtype = self.config.dtype
    kernel, bias = getattr(self, f"{name}_kernel"), getattr(self, f"{name}_bias")
    return jnp.einsum("btd,dhk->bthk", x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [b, t, h, k], k/v [b, s, h, k], mask bool broadcastable to [b, h, t, s] -> [b, t, d]."""
    cfg = self.config
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads",
                                       "activation_kv"))
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / math.sqrt(cfg.head_dim)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = self.attn_dropout(jax.nn.softmax(scores, axis=-1), deterministic=self.deterministic)
    out = jnp.einsum("bhqs,bshk->bqhk", probs.astype(cfg.dtype), v)
    y = jnp.einsum("bthk,hkd->btd", out, self.out_kernel.astype(cfg.dtype))
    return y + self.out_bias.astype(cfg.dtype)


class DecoderLayer(nn.Module):
  """x + SelfAttn(LN(x)); x + CrossAttn(LN(x), encoder); x + FFN(LN(x)) (mBART, pre-LN).

  Scan-compatible: (x, (encoder, encoder_valid, positions), cache) -> (x, new cache or None).
  x [batch, t, d]; positions int [t] (absolute, from 0); cache: this layer's slices of
  `init_cache` or None (no cache: causal attention over x itself).
  """
  config: DecoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array, context: tuple, cache: dict | None):
    cfg = self.config
    encoder, encoder_valid, positions = context
    ln = lambda name: LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype,
                                param_dtype=cfg.param_dtype, name=name)
    drop = lambda h, rate: nn.Dropout(rate)(h, deterministic=self.deterministic)
    self_attn = Attention(cfg, self.deterministic, name="self_attn")
    cross_attn = Attention(cfg, self.deterministic, name="encoder_attn")

    h = ln("self_attn_layer_norm")(x)
    q, k, v = (self_attn.project(n, h) for n in ("query", "key", "value"))
    new_cache = None
    if cache is None:
      keys, values, key_positions = k, v, positions
    else:
      start = (0, positions[0], 0, 0)
      keys = jax.lax.dynamic_update_slice(cache["self_k"], k.astype(cache["self_k"].dtype), start)
      values = jax.lax.dynamic_update_slice(cache["self_v"], v.astype(cache["self_v"].dtype), start)
      key_positions = jnp.arange(keys.shape[1])
    causal = key_positions[None, :] <= positions[:, None]  # [t, s]
    x = x + drop(self_attn.attend(q, keys, values, causal[None, None]), cfg.dropout)

    h = ln("encoder_attn_layer_norm")(x)
    if encoder is not None:
      cross_k, cross_v = cross_attn.project("key", encoder), cross_attn.project("value", encoder)
    else:
      cross_k, cross_v = cache["cross_k"], cache["cross_v"]
    mask = encoder_valid[:, None, None, :]
    x = x + drop(cross_attn.attend(cross_attn.project("query", h), cross_k, cross_v, mask), cfg.dropout)

    h = ln("final_layer_norm")(x)
    h = Dense(cfg.decoder_ffn_dim, ("embed", "mlp"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              name="fc1")(h)
    h = gelu(h) if cfg.activation_function == "gelu" else jax.nn.relu(h)
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    h = drop(h, cfg.activation_dropout)
    h = Dense(cfg.d_model, ("mlp", "embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              name="fc2")(h)
    y = x + drop(h, cfg.dropout)
    if cfg.decoder_layerdrop > 0.0 and not self.deterministic:
      skip = jax.random.uniform(self.make_rng("layerdrop")) < cfg.decoder_layerdrop
      y = jnp.where(skip, x, y)
    y = nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_embed"))
    if cache is not None:
      new_cache = {"self_k": keys, "self_v": values, "cross_k": cross_k.astype(keys.dtype),
                   "cross_v": cross_v.astype(keys.dtype)}
    return y, new_cache


class TextDecoder(nn.Module):
  """Embeddings, scanned layers, final LayerNorm and output projection (see the module docstring).

  __call__(tokens [b, t], encoder [b, s, d] or None, encoder_valid [b, s], cache=None, index=0)
  -> (logits float32 [b, t, vocab], new cache or None). `index` is the absolute position of
  tokens[:, 0] (0 without a cache); with a cache, `encoder` is given on the first call only.
  """
  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, encoder: jax.Array | None, encoder_valid: jax.Array, *,
               cache: dict | None = None, index: jax.Array | int = 0,
               deterministic: bool = True) -> tuple[jax.Array, dict | None]:
    cfg = self.config
    embed = self.param("embed_tokens", partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
                       (cfg.vocab_size, cfg.d_model), cfg.param_dtype)
    positions_table = self.param(
        "embed_positions", partitioned(nn.initializers.normal(0.02), ("positions", "embed")),
        (cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model), cfg.param_dtype)
    scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
    x = jnp.take(embed, tokens, axis=0).astype(cfg.dtype) * scale
    positions = jnp.asarray(index, jnp.int32) + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    x = x + jnp.take(positions_table, positions + POSITION_OFFSET, axis=0).astype(cfg.dtype)[None]
    x = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  name="layernorm_embedding")(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    if encoder is not None:
      encoder = encoder.astype(cfg.dtype)
    scanned = nn.scan(
        DecoderLayer,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True, "layerdrop": True},
        in_axes=(nn.broadcast, 0),
        length=cfg.decoder_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, deterministic, name="layers")
    x, new_cache = scanned(x, (encoder, encoder_valid, positions), cache)
    x = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  name="layer_norm")(x)
    if cfg.tie_word_embeddings:
      logits = jnp.einsum("btd,vd->btv", x, embed.astype(cfg.dtype))
    else:
      logits = Dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=cfg.dtype,
                     param_dtype=cfg.param_dtype, name="lm_head")(x)
    return logits.astype(jnp.float32), new_cache
