"""The wav2vec 2.0 pretraining loss: contrastive (InfoNCE over cosine logits) + diversity + penalty.

All math is float32 whatever the input dtype. Shapes are static: masked frames are gathered to
[batch, M, ...] with a `valid` flag per entry (see masking.masked_positions).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from xlsr_jax.sharding.mesh import batch_axes

_COSINE_EPS = 1e-8          # torch.cosine_similarity's eps on each norm
_PERPLEXITY_EPS = 1e-7      # fairseq GumbelVectorQuantizer: log(avg_probs + 1e-7)


def _unit(x: jax.Array) -> jax.Array:
  """x / max(||x||, eps) over the last axis; gradient-safe at x = 0 (no 0/0 in the backward)."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _COSINE_EPS ** 2))


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijective mix of uint32 values."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def row_fingerprints(x: jax.Array) -> jax.Array:
  """Two 32-bit hashes of the exact float32 bits of each vector: uint32[..., 2] from [..., F].

  Equal vectors (==, so -0.0 and +0.0 agree) always get equal fingerprints; different ones
  collide with probability ~2^-64 per pair. Integer arithmetic only, so bit-reproducible.
  """
  x = x.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  position = jnp.arange(x.shape[-1], dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
  hashes = [jnp.sum(_fmix32(bits ^ _fmix32(position + jnp.uint32(seed))), axis=-1, dtype=jnp.uint32)
            for seed in (0x2545F491, 0x7F4A7C15)]
  return jnp.stack(hashes, axis=-1)


def negatives_equal_positive(targets: jax.Array, negative_indices: jax.Array) -> jax.Array:
  """bool[batch, M, K]: distractor k of frame m equals that frame's target in every feature.

  HF's neg_is_pos without a [batch, M, K, F] tensor: compares row_fingerprints of the vectors
  (exact for equal vectors, a false match has probability ~2^-64 per pair and only drops one
  distractor). targets: [batch, M, F]; negative_indices: int[batch, M, K] into M.
  """
  prints = row_fingerprints(jax.lax.stop_gradient(targets))                 # [batch, M, 2]
  negatives = jax.vmap(lambda p, idx: p[idx])(prints, negative_indices)     # [batch, M, K, 2]
  return jnp.all(negatives == prints[:, :, None, :], axis=-1)


def contrastive_logits(context: jax.Array, targets: jax.Array, negative_indices: jax.Array,
                       temperature: float = 0.1) -> jax.Array:
  """Cosine logits of c_t against [q_t, K distractors] / temperature: float32[batch, M, 1 + K].

  context, targets: [batch, M, F] (gathered at masked frames); negative_indices: int[batch, M, K]
  into M. Distractor similarities come from one [batch, M, M] float32 matmul (precision HIGHEST,
  TPU's default would be bf16) plus a gather: no [batch, M, K, F] tensor, forward or backward.
  A distractor equal to the positive in every feature gets -inf (see negatives_equal_positive).
  """
  if context.shape != targets.shape or context.ndim != 3:
    raise ValueError(f"contrastive_logits: context and targets must both be [batch, M, F], got "
                     f"{context.shape} and {targets.shape}")
  if negative_indices.shape[:2] != context.shape[:2]:
    raise ValueError(f"contrastive_logits: negative_indices must be [batch, M, K] with "
                     f"[batch, M] = {context.shape[:2]}, got {negative_indices.shape}")
  c = _unit(context.astype(jnp.float32))
  q = _unit(targets.astype(jnp.float32))
  positive = jnp.sum(c * q, axis=-1, keepdims=True)                            # [batch, M, 1]
  similarity = jnp.einsum("bmf,bnf->bmn", c, q, precision=jax.lax.Precision.HIGHEST)
  negative = jnp.take_along_axis(similarity, negative_indices, axis=-1)       # [batch, M, K]
  negative = jnp.where(negatives_equal_positive(targets, negative_indices), -jnp.inf, negative)
  return jnp.concatenate([positive, negative], axis=-1) / temperature


def contrastive_loss(logits: jax.Array,
                     valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross-entropy with the positive at index 0, summed over valid frames.

  logits: [batch, M, 1 + K]; valid: bool[batch, M]. Returns (loss_sum float32, num_correct int32,
  num_valid int32). Correct = argmax == 0 and not argmin == 0 (fairseq: a frame whose logits are
  all equal is not counted correct); -inf distractors are simply never the argmax.
  """
  logits = logits.astype(jnp.float32)
  per_frame = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]
  loss_sum = jnp.sum(jnp.where(valid, per_frame, 0.0))
  correct = (jnp.argmax(logits, axis=-1) == 0) & (jnp.argmin(logits, axis=-1) != 0) & valid
  return loss_sum, jnp.sum(correct, dtype=jnp.int32), jnp.sum(valid, dtype=jnp.int32)


def contrastive_sums(context: jax.Array, targets: jax.Array, negative_indices: jax.Array,
                     valid: jax.Array, temperature: float = 0.1) -> tuple[jax.Array, ...]:
  """(loss_sum, num_correct, num_valid) of the contrastive task over a batch.

  context, targets: [batch, M, F]; negative_indices: int[batch, M, K] into M; valid: bool[batch, M].
  Distractors come from the same utterance, so the work is per batch shard by nature: under a
  mesh (`jax.set_mesh`) whose batch axes (the rule table's, `sharding.mesh.batch_axes`) hold more
  than one device, each shard computes its own [b, M, M] similarities, gather and cross-entropy
  under jax.shard_map and only the three scalars are summed (psum) across shards; nothing of size
  M x M or M x K crosses devices, forward or backward.
  """
  def local(c, q, idx, v):
    return contrastive_loss(contrastive_logits(c, q, idx, temperature), v)

  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(a for a in batch_axes() if mesh.shape.get(a, 1) > 1)
  if not axes:
    return local(context, targets, negative_indices, valid)

  def per_shard(c, q, idx, v):
    return tuple(jax.lax.psum(x, axes) for x in local(c, q, idx, v))

  spec = PartitionSpec(axes)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 4,
                       out_specs=(PartitionSpec(),) * 3)(context, targets, negative_indices, valid)


def codebook_perplexity(probs: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """sum_g exp(entropy of the mean distribution of group g over valid frames): float32 scalar.

  probs: [..., G, V] (softmax probabilities or one-hot codes); valid: bool[...] or None (all).
  Entropy uses log(p + 1e-7) as fairseq; HF's xlogy differs by at most V * 1e-7 nats per group.
  """
  probs = probs.astype(jnp.float32).reshape((-1,) + probs.shape[-2:])
  if valid is None:
    valid = jnp.ones(probs.shape[:1], bool)
  valid = valid.reshape(-1)
  if valid.shape[0] != probs.shape[0]:
    raise ValueError(f"codebook_perplexity: valid must cover the leading axes of probs "
                     f"({probs.shape[0]} frames), got {valid.shape[0]}")
  count = jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
  marginal = jnp.sum(jnp.where(valid[:, None, None], probs, 0.0), axis=0) / count   # [G, V]
  entropy = -jnp.sum(marginal * jnp.log(marginal + _PERPLEXITY_EPS), axis=-1)
  return jnp.sum(jnp.exp(entropy))


def diversity_loss(perplexity: jax.Array, num_codevectors: int) -> jax.Array:
  """(G*V - perplexity) / (G*V): 0 when every codevector is used equally, ~1 at collapse."""
  return (num_codevectors - perplexity) / num_codevectors


def feature_penalty(raw_features: jax.Array) -> jax.Array:
  """Mean square of the raw conv features (before the LayerNorm), float32: fairseq features_pen."""
  return jnp.mean(jnp.square(raw_features.astype(jnp.float32)))


def pretraining_sums(context: jax.Array, targets: jax.Array, negative_indices: jax.Array,
                     valid: jax.Array, soft_probs: jax.Array, *, num_codevectors: int,
                     raw_features: jax.Array | None = None, temperature: float = 0.1,
                     diversity_weight: float = 0.1, feature_penalty_weight: float = 0.0
                     ) -> dict[str, jax.Array]:
  """The wav2vec 2.0 loss of a batch as sums and counts: nothing is divided by the frame count.

  context, targets: [batch, M, F]; negative_indices: int[batch, M, K]; valid: bool[batch, M];
  soft_probs: [batch, M, G, V] quantizer softmax at the same frames; num_codevectors = G * V.
  Returns float32 scalars:
    loss_sum = contrastive_loss_sum + diversity_weight * diversity_loss * n
               + feature_penalty_weight * feature_penalty * n   (with feature_penalty_weight 0,
               HF Wav2Vec2ForPreTraining's loss; n = num_masked, the valid masked frames)
    contrastive_loss_sum, num_correct, num_masked: sums and counts over the masked frames
    code_perplexity, diversity_loss, feature_penalty: values of the whole batch
  `normalize` turns them into per-frame metrics. Under a mesh the contrastive part runs per batch
  shard (contrastive_sums).
  """
  contrastive_sum, num_correct, num_valid = contrastive_sums(
      context, targets, negative_indices, valid, temperature)
  perplexity = codebook_perplexity(soft_probs, valid)
  diversity = diversity_loss(perplexity, num_codevectors)
  penalty = (feature_penalty(raw_features) if raw_features is not None
             else jnp.zeros((), jnp.float32))
  n = num_valid.astype(jnp.float32)
  loss_sum = (contrastive_sum + diversity_weight * diversity * n
              + feature_penalty_weight * penalty * n)
  return dict(loss_sum=loss_sum, contrastive_loss_sum=contrastive_sum,
              num_correct=num_correct.astype(jnp.float32), num_masked=n,
              code_perplexity=perplexity, diversity_loss=diversity, feature_penalty=penalty)


def normalize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-masked-frame metrics from `pretraining_sums` (of one batch, or added over micro-batches):
  the one place the loss is divided by its denominator, the masked frames (fairseq's sample_size;
  at least 1). Adds loss, loss_bits, contrastive_loss, contrastive_loss_bits and accuracy."""
  denominator = jnp.maximum(sums["num_masked"], 1.0)
  loss = sums["loss_sum"] / denominator
  contrastive = sums["contrastive_loss_sum"] / denominator
  return dict(sums, loss=loss, loss_bits=loss / math.log(2), contrastive_loss=contrastive,
              contrastive_loss_bits=contrastive / math.log(2),
              accuracy=sums["num_correct"] / denominator)


def pretraining_loss(context: jax.Array, targets: jax.Array, negative_indices: jax.Array,
                     valid: jax.Array, soft_probs: jax.Array, *, num_codevectors: int,
                     raw_features: jax.Array | None = None, temperature: float = 0.1,
                     diversity_weight: float = 0.1, feature_penalty_weight: float = 0.0
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss per masked frame, every metric): `normalize(pretraining_sums(...))`, same arguments."""
  metrics = normalize(pretraining_sums(
      context, targets, negative_indices, valid, soft_probs, num_codevectors=num_codevectors,
      raw_features=raw_features, temperature=temperature, diversity_weight=diversity_weight,
      feature_penalty_weight=feature_penalty_weight))
  return metrics["loss"], metrics
