"""Gumbel-softmax product quantizer: G groups x V entries, straight-through hard samples in training."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.layers import Dense, partitioned, uniform01


class GumbelVectorQuantizer(nn.Module):
  """features [batch, frames, conv_dim] -> (codevectors [batch, frames, codevector_dim], soft_probs
  [batch, frames, G, V], code_indices int32 [batch, frames, G]).

  Training (deterministic=False): hard one-hot of softmax((logits + gumbel) / temperature) with the
  straight-through gradient of the soft sample; `gumbel_noise` may be given (same shape as the
  logits) to reproduce a reference, otherwise it is drawn from the "gumbel" RNG stream.
  Inference: argmax of the logits. `soft_probs` is softmax(logits) (no noise), for perplexity.
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, features: jax.Array, temperature: float | jax.Array, deterministic: bool,
               gumbel_noise: jax.Array | None = None):
    cfg = self.config
    groups, entries = cfg.num_codevector_groups, cfg.num_codevectors_per_group
    logits = Dense(groups * entries, ("conv_out", "codevector_logits"),
                   kernel_init=nn.initializers.normal(1.0), dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="weight_proj")(features)
    logits = logits.astype(jnp.float32).reshape(*features.shape[:-1], groups, entries)
    if deterministic:
      code_indices = jnp.argmax(logits, axis=-1)
      codes = jax.nn.one_hot(code_indices, entries, dtype=jnp.float32)
    else:
      if gumbel_noise is None:
        gumbel_noise = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
      y_soft = jax.nn.softmax((logits + gumbel_noise) / temperature, axis=-1)
      code_indices = jnp.argmax(y_soft, axis=-1)
      y_hard = jax.nn.one_hot(code_indices, entries, dtype=jnp.float32)
      codes = y_hard - jax.lax.stop_gradient(y_soft) + y_soft
    codebook = self.param("codevectors", partitioned(uniform01, ("codebook_groups",
                                                                 "codebook_entries", "codevector")),
                          (groups, entries, cfg.codevector_dim // groups), cfg.param_dtype)
    codevectors = jnp.einsum("...gv,gvd->...gd", codes.astype(cfg.dtype), codebook.astype(cfg.dtype))
    codevectors = codevectors.reshape(*features.shape[:-1], cfg.codevector_dim)
    soft_probs = jax.nn.softmax(logits, axis=-1)
    return codevectors, soft_probs, code_indices.astype(jnp.int32)
