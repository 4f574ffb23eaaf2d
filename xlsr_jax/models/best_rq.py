"""BEST-RQ (Chiu et al. 2022): the random-projection quantizer and the pretraining model around the
wav2vec 2.0 encoder.

The quantizer is never trained: a frozen Xavier-uniform projection and a frozen, L2-normalised
Gaussian codebook, both drawn from `BestRqConfig.seed` (not from the init key, so every host and
every restart draws the same), stored as parameters under "random_quantizer" (so they are
checkpointed, sharded and exported like any other) and excluded from the optimizer by
`objectives.best_rq.BestRqObjective.frozen_params`. Gradients never reach them (stop_gradient).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models import fbank
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.layers import Dense, partitioned
from xlsr_jax.models.wav2vec2 import Wav2Vec2Model, gather_frames

QUANTIZER = "random_quantizer"  # the frozen parameters' scope


@dataclasses.dataclass(frozen=True)
class BestRqConfig:
  """The random-projection quantizer: `num_codebooks` books of `codebook_size` x `codebook_dim`,
  each with its own projection of the stacked log-mel (fbank.STACK x num_mel_bins) and softmax head."""
  num_codebooks: int = 1
  codebook_size: int = 8192
  codebook_dim: int = 16
  num_mel_bins: int = 80
  seed: int = 0

  def __post_init__(self):
    for name in ("num_codebooks", "codebook_size", "codebook_dim", "num_mel_bins"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

  @property
  def input_dim(self) -> int:
    return fbank.STACK * self.num_mel_bins


def _unit(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))


def frozen_projection(config: BestRqConfig) -> jax.Array:
  """float32 [num_codebooks, input_dim, codebook_dim]: Xavier-uniform, from the config's seed."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  init = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
  return init(key, (config.num_codebooks, config.input_dim, config.codebook_dim), jnp.float32)


def frozen_codebook(config: BestRqConfig) -> jax.Array:
  """float32 [num_codebooks, codebook_size, codebook_dim]: N(0, 1) rows, L2-normalised."""
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return _unit(jax.random.normal(key, (config.num_codebooks, config.codebook_size,
                                       config.codebook_dim), jnp.float32))


def quantize(features: jax.Array, projection: jax.Array, codebook: jax.Array) -> jax.Array:
  """Nearest codebook entry by cosine: features [..., input_dim] -> int32 [..., num_codebooks]."""
  hi = jax.lax.Precision.HIGHEST
  projected = _unit(jnp.einsum("...i,nid->...nd", features.astype(jnp.float32), projection,
                               precision=hi))
  similarity = jnp.einsum("...nd,nkd->...nk", projected, codebook, precision=hi)
  return jnp.argmax(similarity, axis=-1).astype(jnp.int32)


class RandomProjectionQuantizer(nn.Module):
  """Frozen targets: stacked log-mel [batch, M, input_dim] -> code ids int32 [batch, M, num_codebooks]."""
  config: BestRqConfig

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    cfg = self.config
    projection = self.param("projection", partitioned(lambda *_: frozen_projection(cfg),
                                                      ("codebooks", "fbank_in", "codebook_dim")))
    codebook = self.param("codebook", partitioned(lambda *_: frozen_codebook(cfg),
                                                  ("codebooks", "codebook_entries", "codebook_dim")))
    return quantize(features, jax.lax.stop_gradient(projection), jax.lax.stop_gradient(codebook))


class BestRqForPreTraining(nn.Module):
  """Encoder (under "wav2vec2", as in Wav2Vec2ForPreTraining) + frozen quantizer + softmax heads.

  Same call as Wav2Vec2ForPreTraining: mask_time bool [batch, frames] (frames the encoder sees as
  the mask embedding), masked_indices int [batch, M] (static M). Returns logits float32
  [batch, M, num_codebooks, codebook_size] at the masked frames, targets int32 [batch, M,
  num_codebooks] (codes of the unmasked log-mel there), frame_valid and last_hidden_state.
  """
  config: Wav2Vec2Config
  best_rq: BestRqConfig

  @nn.compact
  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None, mask_time: jax.Array,
               masked_indices: jax.Array, *, frame_lengths: jax.Array | None = None,
               deterministic: bool = True, **_unused: Any) -> dict[str, Any]:
    cfg, rq = self.config, self.best_rq
    out = Wav2Vec2Model(cfg, name="wav2vec2")(waveform, padding_mask, frame_lengths=frame_lengths,
                                             mask_time=mask_time, deterministic=deterministic)
    num_frames = out["last_hidden_state"].shape[1]
    lengths = frame_lengths
    if lengths is None and out["frame_valid"] is not None:
      lengths = jnp.sum(out["frame_valid"], axis=-1)
    # Targets from the whole unmasked utterance (normalised over its real frames), then gathered.
    features = fbank.stacked_log_mel(waveform, num_frames, lengths, rq.num_mel_bins)
    targets = RandomProjectionQuantizer(rq, name=QUANTIZER)(gather_frames(features, masked_indices))
    hidden = gather_frames(out["last_hidden_state"], masked_indices)
    logits = Dense(rq.num_codebooks * rq.codebook_size, ("embed", "codebook_logits"),
                   dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="heads")(hidden)
    logits = logits.reshape(hidden.shape[:2] + (rq.num_codebooks, rq.codebook_size))
    return dict(logits=logits.astype(jnp.float32), targets=targets,
                frame_valid=out["frame_valid"], last_hidden_state=out["last_hidden_state"])
