"""Distractor sampling for the contrastive task, over the gathered masked frames (static shapes)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_negatives(rng: jax.Array, num_masked: jax.Array, max_masked: int,
                     num_negatives: int) -> jax.Array:
  """K distractor indices per masked frame, into the row's masked frames: int32[batch, M, K].

  num_masked: int[batch] valid masked frames per row (traced); M = max_masked, K = num_negatives.
  For frame j < n_b of row b: K draws uniform in [0, n_b - 1) with replacement, +1 when >= j
  (fairseq / HF rule), so never j itself and always < n_b. Entries of frames j >= n_b, and of rows
  with n_b < 2 (no other frame to draw), are in range [0, max(n_b, 1)) but meaningless: the loss
  must mask them with the valid flags.
  """
  if max_masked < 1 or num_negatives < 1:
    raise ValueError(f"sample_negatives: max_masked and num_negatives must be >= 1, got "
                     f"{max_masked} and {num_negatives}")
  num_masked = jnp.clip(jnp.asarray(num_masked, jnp.int32), 0, max_masked)
  if num_masked.ndim != 1:
    raise ValueError(f"sample_negatives: num_masked must be int[batch], got shape "
                     f"{num_masked.shape}")
  batch = num_masked.shape[0]
  high = jnp.maximum(num_masked - 1, 1)[:, None, None]                    # [batch, 1, 1]
  draws = jax.random.randint(rng, (batch, max_masked, num_negatives), 0, high, jnp.int32)
  own = jnp.arange(max_masked, dtype=jnp.int32)[None, :, None]
  draws = draws + (draws >= own).astype(jnp.int32)
  return jnp.minimum(draws, jnp.maximum(num_masked - 1, 0)[:, None, None])
