"""The Transformer context network: convolutional positional embedding and scanned encoder layers.

The layers are one `nn.scan` over stacked parameters (leading logical axis "layers"), so compile
time stays flat with depth; per-layer rematerialisation follows `config.remat_policy`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.layers import Dense, LayerNorm, gelu, grouped_conv1d, partitioned
from xlsr_jax.models.splash import splash_attention


class PositionalConvEmbedding(nn.Module):
  """Grouped Conv1d (kernel K, padding K//2) with weight norm over the kernel axis, SamePad, GELU.

  x: [batch, frames, hidden] -> [batch, frames, hidden]. The weight is g[k] * v[k] / ||v[k]||, with
  the norm over (in, out) for each kernel position k (PyTorch `weight_norm(dim=2)`).
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dim, kernel, groups = cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
    std = math.sqrt(4.0 / (kernel * dim))
    v = self.param("weight_v", partitioned(nn.initializers.normal(std), ("conv_width", None, "pos_conv_out")),
                   (kernel, dim // groups, dim), cfg.param_dtype)
    v_value = v.value if isinstance(v, nn.LogicallyPartitioned) else v
    g = self.param("weight_g", partitioned(
        lambda key, shape, dtype: jnp.sqrt(jnp.sum(jnp.square(v_value.astype(jnp.float32)),
                                                   axis=(1, 2))).astype(dtype), ("conv_width",)),
        (kernel,), cfg.param_dtype)
    bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), (dim,), cfg.param_dtype)
    # Channel-sharded input (groups split across devices): with a channel-replicated, batch-sharded
    # input XLA's SPMD partitioner scales the weight gradient of a grouped conv by the replica
    # count (measured on XLA:CPU, jax 0.10.2), so the default rules shard these channels.
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_pos_conv"))
    v32 = v.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(v32), axis=(1, 2), keepdims=True))
    weight = (g.astype(jnp.float32)[:, None, None] * v32 / norm).astype(cfg.dtype)
    y = grouped_conv1d(x.astype(cfg.dtype), weight, kernel // 2, groups)
    y = y + bias.astype(cfg.dtype)
    if kernel % 2 == 0:
      y = y[:, :-1]
    return gelu(y)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a key padding mask: [batch, frames, hidden] -> same."""
  config: Wav2Vec2Config
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array, key_valid: jax.Array | None) -> jax.Array:
    cfg = self.config
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim

    def project(name):
      kernel = self.param(f"{name}_kernel", partitioned(nn.initializers.normal(0.02),
                                                        ("embed", "heads", "kv")),
                          (cfg.hidden_size, heads, head_dim), cfg.param_dtype)
      bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, ("heads", "kv")),
                        (heads, head_dim), cfg.param_dtype)
      y = jnp.einsum("btd,dhk->bthk", x.astype(cfg.dtype), kernel.astype(cfg.dtype))
      return y + bias.astype(cfg.dtype)

    q, k, v = project("query"), project("key"), project("value")
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads",
                                       "activation_kv"))
    mask = None if key_valid is None else key_valid[:, None, None, :]  # [batch, 1, 1, frames]
    use_dropout = cfg.attention_dropout > 0.0 and not self.deterministic
    if cfg.attention_impl == "manual" or use_dropout:
      scores = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / math.sqrt(head_dim)
      if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1)
      probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=self.deterministic)
      out = jnp.einsum("bhqs,bshk->bqhk", probs.astype(cfg.dtype), v)
    elif cfg.attention_impl == "splash":
      out = splash_attention(q, k, v, key_valid, cfg.splash_block_size)
    else:
      out = jax.nn.dot_product_attention(
          q, k, v, mask=mask, implementation=None if cfg.attention_impl == "xla" else "cudnn")
    out_kernel = self.param("out_kernel", partitioned(nn.initializers.normal(0.02),
                                                      ("heads", "kv", "embed")),
                            (heads, head_dim, cfg.hidden_size), cfg.param_dtype)
    out_bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)),
                          (cfg.hidden_size,), cfg.param_dtype)
    y = jnp.einsum("bthk,hkd->btd", out.astype(cfg.dtype), out_kernel.astype(cfg.dtype))
    return y + out_bias.astype(cfg.dtype)


class FeedForward(nn.Module):
  """Linear hidden -> intermediate, GELU, dropout, Linear -> hidden: [batch, frames, hidden]."""
  config: Wav2Vec2Config
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = Dense(cfg.intermediate_size, ("embed", "mlp"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              name="intermediate")(x)
    h = gelu(h)
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    h = nn.Dropout(cfg.activation_dropout)(h, deterministic=self.deterministic)
    return Dense(cfg.hidden_size, ("mlp", "embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 name="output")(h)


class EncoderLayer(nn.Module):
  """One Transformer block, pre-LN ("stable", XLS-R) or post-LN (base), with layerdrop.

  Scan-compatible: (x [batch, frames, hidden], key_valid) -> (x, x) so the scan can stack outputs.
  """
  config: Wav2Vec2Config
  deterministic: bool
  return_layer_outputs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, key_valid: jax.Array | None):
    cfg = self.config
    ln = lambda name: LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype,
                                param_dtype=cfg.param_dtype, name=name)
    drop = lambda h: nn.Dropout(cfg.hidden_dropout)(h, deterministic=self.deterministic)
    attention = SelfAttention(cfg, self.deterministic, name="attention")
    feed_forward = FeedForward(cfg, self.deterministic, name="feed_forward")
    attend = lambda h: checkpoint_name(attention(h, key_valid), "attention_out")
    feed = lambda h: checkpoint_name(feed_forward(h), "ffn_out")
    if cfg.do_stable_layer_norm:
      y = x + drop(attend(ln("layer_norm")(x)))
      y = y + drop(feed(ln("final_layer_norm")(y)))
    else:
      y = ln("layer_norm")(x + drop(attend(x)))
      y = ln("final_layer_norm")(y + drop(feed(y)))
    if cfg.layerdrop > 0.0 and not self.deterministic:
      skip = jax.random.uniform(self.make_rng("layerdrop")) < cfg.layerdrop
      y = jnp.where(skip, x, y)
    y = nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_embed"))
    return y, (y if self.return_layer_outputs else None)


def _remat_policy(name: str):
  return {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
      "save_attention_and_ffn_out": jax.checkpoint_policies.save_only_these_names(
          "attention_out", "ffn_out"),
  }[name]


class TransformerEncoder(nn.Module):
  """Positional conv + scanned layers (+ final LN when pre-LN).

  x: [batch, frames, hidden], frame_valid: bool [batch, frames] or None. Returns
  (last_hidden_state [batch, frames, hidden], layer_outputs [layers, batch, frames, hidden] or None,
  layer_input [batch, frames, hidden] or None): with return_layer_outputs, also the input of the
  first layer (after the positional convolution, and the LayerNorm of the post-LN variant), which
  downstream evaluation stacks with the layer outputs. Padded frames are zeroed before the
  positional convolution, as in the reference.
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, x: jax.Array, frame_valid: jax.Array | None, deterministic: bool,
               return_layer_outputs: bool = False):
    cfg = self.config
    if frame_valid is not None:
      x = jnp.where(frame_valid[..., None], x, jnp.zeros((), x.dtype))
    x = x + PositionalConvEmbedding(cfg, name="pos_conv_embed")(x).astype(x.dtype)
    if not cfg.do_stable_layer_norm:
      x = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    name="layer_norm")(x)
    x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    x = x.astype(cfg.dtype)
    layer_input = x if return_layer_outputs else None
    layer_cls = EncoderLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(EncoderLayer, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
    scanned = nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True, "layerdrop": True},
        in_axes=nn.broadcast,
        length=cfg.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, deterministic, return_layer_outputs, name="layers")
    x, layer_outputs = scanned(x, frame_valid)
    if cfg.do_stable_layer_norm:
      x = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    name="layer_norm")(x)
    return x, layer_outputs, layer_input
