"""Span masking for wav2vec 2.0 with static shapes: fairseq's compute_mask_indices, jittable.

Everything here is a pure function of an explicit PRNG key and arrays whose shapes are static
python ints, so it runs inside a jitted train step on TPU (no host-side numpy masking).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.feature_encoder import frame_lengths


def num_feature_frames(num_samples, config: Wav2Vec2Config | None = None):
  """Frames after the conv feature encoder of `config` (default: the standard 400-sample window,
  320 stride): `models.feature_encoder.frame_lengths`. Python ints give an int, integer arrays
  such as per-row lengths [batch] an array.
  """
  return frame_lengths(num_samples, config or Wav2Vec2Config())


def _check_span_args(where: str, mask_prob: float, mask_length: int, min_masks: int) -> None:
  if not 0.0 <= mask_prob <= 1.0:
    raise ValueError(f"{where}: mask_prob must be in [0, 1], got {mask_prob}")
  if mask_length < 1:
    raise ValueError(f"{where}: mask_length must be >= 1, got {mask_length}")
  if min_masks < 0:
    raise ValueError(f"{where}: min_masks must be >= 0, got {min_masks}")


def max_spans(num_frames: int, mask_prob: float, mask_length: int, min_masks: int) -> int:
  """Static upper bound on spans per row: int(p * T / L + U[0, 1)) <= floor(p * T / L) + 1."""
  return max(min_masks, math.floor(mask_prob * num_frames / mask_length) + 1)


def max_masked_frames(num_frames: int, mask_prob: float, mask_length: int, min_masks: int) -> int:
  """Static upper bound M on masked frames per row of a [*, num_frames] batch (at least 1).

  Spans start in [0, T - L), so the last frame is never masked: M <= T - 1 (0 if T <= L).
  """
  _check_span_args("max_masked_frames", mask_prob, mask_length, min_masks)
  most = num_frames - 1 if num_frames > mask_length else 0
  bound = min(most, max_spans(num_frames, mask_prob, mask_length, min_masks) * mask_length)
  return max(bound, 1)


def _random_subset(bits: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
  """min(k_b, count_b) eligible positions per row, uniformly without replacement: bool[batch, n].

  bits: uint32[batch, n] random; eligible: bool[batch, n]; k: int[batch]. Keys are the random bits
  with the position in the low bits, so they are distinct and one plain sort gives the k-th
  smallest as a threshold (no argsort, no inverse permutation).
  """
  n = eligible.shape[-1]
  shift = max(n - 1, 1).bit_length()
  if shift > 23:
    raise ValueError(f"_random_subset: rows of {n} positions leave too few random key bits")
  positions = jnp.arange(n, dtype=jnp.uint32)
  keys = ((bits >> (shift + 1)) << shift) | positions                 # distinct, < 2**31
  keys = jnp.where(eligible, keys, jnp.uint32(0xFFFFFFFF))
  kth = jnp.clip(k - 1, 0, n - 1)[:, None]
  threshold = jnp.take_along_axis(jnp.sort(keys, axis=-1), kth, axis=-1)
  return eligible & (keys <= threshold) & (k > 0)[:, None]


def _expand_spans(starts: jax.Array, mask_length: int) -> jax.Array:
  """bool[batch, T] span starts -> frames covered by some span [s, s + L): a sliding-window max."""
  covered = jax.lax.reduce_window(starts.astype(jnp.int32), 0, jax.lax.max, (1, mask_length),
                                  (1, 1), ((0, 0), (mask_length - 1, 0)))
  return covered > 0


def compute_span_mask(rng: jax.Array, frame_lengths: jax.Array, num_frames: int, *,
                      mask_prob: float, mask_length: int, min_masks: int = 2,
                      require_same_masks: bool = True) -> jax.Array:
  """fairseq compute_mask_indices (mask_type "static", overlapping spans): bool[batch, num_frames].

  Per row of unpadded length T: n = max(min_masks, int(mask_prob * T / L + U[0, 1))) spans of
  length L, starts drawn without replacement from [0, T - L) (so spans never touch padding),
  n capped at the T - L available starts; rows with T <= L get no mask. With require_same_masks
  every row is trimmed (random masked frames unmasked) to the minimum masked count over the rows
  that can hold a span (rows with T <= L, e.g. all-padding filler rows, stay unmasked and are left
  out of the minimum; fairseq would raise on them).
  frame_lengths: int[batch] (may be traced); num_frames, mask_prob, mask_length: static.
  """
  _check_span_args("compute_span_mask", mask_prob, mask_length, min_masks)
  frame_lengths = jnp.asarray(frame_lengths, jnp.int32)
  if frame_lengths.ndim != 1:
    raise ValueError(f"compute_span_mask: frame_lengths must be int[batch], got shape "
                     f"{frame_lengths.shape}")
  batch = frame_lengths.shape[0]
  # One random draw for everything (threefry is slow to compile): start keys, trim keys, rounding.
  bits = jax.random.bits(rng, (batch, 2 * num_frames + 1), jnp.uint32)
  start_bits, trim_bits = bits[:, :num_frames], bits[:, num_frames:2 * num_frames]
  rounding = (bits[:, -1] >> 8).astype(jnp.float32) * (1.0 / (1 << 24))   # U[0, 1)

  lengths = jnp.minimum(frame_lengths, num_frames)
  num_starts = jnp.maximum(lengths - mask_length, 0)                        # [batch]
  num_spans = jnp.floor(mask_prob * lengths.astype(jnp.float32) / mask_length + rounding)
  num_spans = jnp.maximum(num_spans.astype(jnp.int32), min_masks)
  num_spans = jnp.minimum(num_spans, max_spans(num_frames, mask_prob, mask_length, min_masks))

  positions = jnp.arange(num_frames, dtype=jnp.int32)[None, :]
  starts = _random_subset(start_bits, positions < num_starts[:, None], num_spans)
  mask = _expand_spans(starts, mask_length)
  if not require_same_masks:
    return mask

  counts = jnp.sum(mask, axis=-1, dtype=jnp.int32)
  target = jnp.min(jnp.where(num_starts > 0, counts, num_frames + 1))
  target = jnp.where(target > num_frames, 0, target)
  return _random_subset(trim_bits, mask, jnp.full((batch,), target))


def masked_positions(mask: jax.Array, max_masked: int) -> tuple[jax.Array, jax.Array]:
  """Positions of the masked frames, ascending, padded to a static M (cumsum-scatter, O(T)).

  mask: bool[batch, T] -> (indices int32[batch, M], valid bool[batch, M]); padding entries hold
  index 0 (in range, harmless to gather) and valid False. Masked frames beyond M are dropped.
  """
  if mask.ndim != 2:
    raise ValueError(f"masked_positions: mask must be bool[batch, frames], got shape {mask.shape}")
  if max_masked < 1:
    raise ValueError(f"masked_positions: max_masked must be >= 1, got {max_masked}")
  nonzero = jax.vmap(lambda row: jnp.nonzero(row, size=max_masked, fill_value=0)[0])
  indices = nonzero(mask).astype(jnp.int32)
  counts = jnp.sum(mask, axis=-1, dtype=jnp.int32)
  valid = jnp.arange(max_masked, dtype=jnp.int32)[None, :] < counts[:, None]
  return indices, valid


def gather_frames(x: jax.Array, indices: jax.Array) -> jax.Array:
  """x[batch, T, ...] at indices int[batch, M] -> [batch, M, ...] (e.g. masked frames)."""
  return jax.vmap(lambda row, idx: row[idx])(x, indices)


def compute_channel_mask(rng: jax.Array, batch: int, dim: int, *, mask_prob: float,
                         mask_length: int, min_masks: int = 0) -> jax.Array:
  """Feature-channel span mask (fine-tuning, HF mask_feature_*): bool[batch, dim].

  The same span rule as compute_span_mask over the channel axis, every row of full length dim,
  no trimming (HF samples channel masks independently per row). Broadcast over time to apply.
  """
  lengths = jnp.full((batch,), dim, jnp.int32)
  return compute_span_mask(rng, lengths, dim, mask_prob=mask_prob, mask_length=mask_length,
                           min_masks=min_masks, require_same_masks=False)
