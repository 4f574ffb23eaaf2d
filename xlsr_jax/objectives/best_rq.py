"""BEST-RQ (Chiu et al. 2022): predict the frozen random-projection quantizer's codes of masked frames.

The encoder sees the span-masked frames (the same mask as wav2vec 2.0, with its learned mask
embedding); the targets are the codes of the unmasked log-mel frames (models/best_rq.py); the loss
is cross-entropy on masked real frames only, averaged over codebooks, as sums and counts like the
wav2vec 2.0 loss. No negatives, no Gumbel noise, no similarity matrix: nothing in the targets is
learned, so they cannot collapse.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from xlsr_jax.models.best_rq import QUANTIZER, BestRqConfig, BestRqForPreTraining
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.objectives.base import (Batch, MaskDraws, StepShapes, draw_masks, masking_sums,
                                      summarize_sums)
from xlsr_jax.training import flops


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
  """Cross-entropy of each codebook's softmax at the valid masked frames, as sums and counts.

  logits float [batch, M, N, K]; targets int [batch, M, N]; valid bool [batch, M]. Returns float32
  scalars: loss_sum (sum over valid frames of the mean over the N codebooks), num_masked,
  num_correct_book{n} (argmax == target) and target_perplexity (exp of the entropy of each book's
  code distribution over the valid frames, averaged over books: how many codes the targets use).
  """
  logits = logits.astype(jnp.float32)
  num_books, num_codes = logits.shape[-2:]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  per_book = jax.nn.logsumexp(logits, axis=-1) - target_logit                  # [batch, M, N]
  weight = valid.astype(jnp.float32)
  loss_sum = jnp.sum(jnp.mean(per_book, axis=-1) * weight)
  correct = (jnp.argmax(logits, axis=-1) == targets) & valid[..., None]         # [batch, M, N]
  sums = dict(loss_sum=loss_sum, num_masked=jnp.sum(weight))
  for n in range(num_books):
    sums[f"num_correct_book{n}"] = jnp.sum(correct[..., n]).astype(jnp.float32)
  sums["target_perplexity"] = target_perplexity(targets, valid, num_codes)
  return sums


def target_perplexity(targets: jax.Array, valid: jax.Array, num_codes: int) -> jax.Array:
  """Mean over codebooks of exp(entropy of the codes' distribution over valid frames): float32.

  targets int [batch, M, N]; valid bool [batch, M]. A histogram (scatter-add), no one-hot.
  """
  num_books = targets.shape[-1]
  flat = targets.reshape(-1, num_books)
  weight = jnp.broadcast_to(valid.reshape(-1, 1), flat.shape).astype(jnp.float32)
  books = jnp.broadcast_to(jnp.arange(num_books)[None, :], flat.shape)
  counts = jnp.zeros((num_books, num_codes), jnp.float32).at[books, flat].add(weight)
  probs = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0),
                     axis=-1)
  return jnp.mean(jnp.exp(entropy))


def normalize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-masked-frame metrics: loss (nats), loss_bits, accuracy (mean over books) and
  accuracy_book{n}; the one place the loss is divided by the masked frames (at least 1)."""
  denominator = jnp.maximum(sums["num_masked"], 1.0)
  books = sorted(k for k in sums if k.startswith("num_correct_book"))
  out = dict(sums, loss=sums["loss_sum"] / denominator)
  out["loss_bits"] = out["loss"] / math.log(2)
  for key in books:
    out[key.replace("num_correct_", "accuracy_")] = sums[key] / denominator
  out["accuracy"] = sum(sums[k] for k in books) / (denominator * len(books))
  return out


PER_BATCH = ("target_perplexity",)


def best_rq_config(objective: ml_collections.ConfigDict) -> BestRqConfig:
  """The objective.best_rq section as the model's dataclass."""
  return BestRqConfig(**objective.best_rq.to_dict())


class BestRqObjective:
  """objective.name = "best_rq": the wav2vec 2.0 encoder predicting random-projection codes."""
  name = "best_rq"
  # Top-level parameter trees that start fresh under train.init_from when the checkpoint lacks
  # them (wav2vec 2.0 needs its quantizer loaded, or re-initialised by train.init_exclude).
  fresh_heads: tuple[str, ...] = (QUANTIZER, "heads")
  frozen_params = (f"^{QUANTIZER}/",)

  def __init__(self, model_config: Wav2Vec2Config, config: ml_collections.ConfigDict):
    self.model_config, self.config = model_config, config
    self.best_rq = best_rq_config(config)
    books = tuple(f"accuracy_book{n}" for n in range(self.best_rq.num_codebooks))
    self.metric_names = ("loss", "loss_bits", "accuracy") + books + (
        "target_perplexity", "num_masked", "masked_fraction", "real_frames")

  def make_model(self) -> BestRqForPreTraining:
    return BestRqForPreTraining(self.model_config, self.best_rq)

  def draw(self, rng: jax.Array, sample_lengths: jax.Array, shapes: StepShapes,
           noise_rng: jax.Array | None = None) -> MaskDraws:
    del noise_rng  # nothing is sampled but the mask
    return draw_masks(rng, sample_lengths, self.model_config, self.config, shapes)

  def loss_sums(self, params: Any, model: BestRqForPreTraining, batch: Batch, draws: MaskDraws,
                rngs: dict[str, jax.Array], step: jax.Array, deterministic: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del step
    out = model.apply({"params": params}, batch["waveform"], None, draws.mask_time,
                      draws.masked_indices, frame_lengths=draws.frame_lengths,
                      deterministic=deterministic, rngs=rngs)
    sums = cross_entropy_sums(out["logits"], out["targets"], draws.valid)
    return sums["loss_sum"], dict(sums, **masking_sums(draws))

  def summarize(self, sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    metrics = summarize_sums(sums, PER_BATCH, normalize)
    return {k: metrics[k] for k in self.metric_names}

  def step_metrics(self, step: jax.Array) -> dict[str, jax.Array]:
    del step
    return {}

  def export_params(self, params: Any) -> Any:
    """The encoder alone (the Wav2Vec2Model layout every downstream task and the HF export read)."""
    return params["wav2vec2"]

  def forward_flops(self, size: flops.StepSize) -> dict[str, int]:
    rq = self.best_rq
    return flops.best_rq_forward_flops(
        self.model_config, size, num_codebooks=rq.num_codebooks, codebook_size=rq.codebook_size,
        codebook_dim=rq.codebook_dim, num_mel_bins=rq.num_mel_bins)
