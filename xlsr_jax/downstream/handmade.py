"""Hand-made-feature baselines for the LID / SID probes: what a pretrained encoder must beat.

FBANK (SUPERB's baseline upstream): 80 log-mel bins every 10 ms (models/fbank.py); MFCC: the
first 13 DCT-II (orthonormal) coefficients of those log-mel frames with their deltas and
delta-deltas (librosa's width-9 regression), 39 per frame. Each utterance is pooled to the mean
and standard deviation of its real frames, float32 [1, n, 2 * dim], and goes through the same
standardised L-BFGS probe as the encoder's features (downstream/probes.py), so the table compares
features, not classifiers.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.downstream import data as data_lib
from xlsr_jax.models import fbank

NAMES = ("fbank", "mfcc")
NUM_MEL_BINS = 80
NUM_MFCC = 13
DELTA_WIDTH = 9  # librosa.feature.delta's default


def dct_matrix(num_bins: int, num_coefficients: int) -> np.ndarray:
  """Orthonormal DCT-II as float32 [num_bins, num_coefficients] (scipy.fft.dct(norm="ortho"))."""
  n = np.arange(num_bins)[:, None]
  k = np.arange(num_coefficients)[None, :]
  basis = np.cos(np.pi * k * (2 * n + 1) / (2 * num_bins)) * np.sqrt(2.0 / num_bins)
  basis[:, 0] /= np.sqrt(2.0)
  return basis.astype(np.float32)


def deltas(x: jax.Array, num_real: jax.Array) -> jax.Array:
  """Regression deltas over time of x [batch, frames, dim] within each row's first `num_real`
  frames; past the edges the first / last real frame repeats (librosa.feature.delta mode="nearest")."""
  half = DELTA_WIDTH // 2
  frames = jnp.arange(x.shape[1])
  last = jnp.maximum(num_real - 1, 0)[:, None]
  out = jnp.zeros_like(x)
  for n in range(1, half + 1):
    ahead = jnp.clip(frames[None, :] + n, 0, last)
    behind = jnp.clip(frames[None, :] - n, 0, last)
    out = out + n * (jnp.take_along_axis(x, ahead[..., None], axis=1)
                     - jnp.take_along_axis(x, behind[..., None], axis=1))
  return out / (2 * sum(n * n for n in range(1, half + 1)))


def _mean_std(x: jax.Array, real: jax.Array) -> jax.Array:
  """[batch, frames, dim] -> [batch, 2 * dim]: mean and std over each row's real frames."""
  weight = real[..., None].astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight, axis=1), 1.0)
  mean = jnp.sum(x * weight, axis=1) / count
  var = jnp.sum(jnp.square(x - mean[:, None]) * weight, axis=1) / count
  return jnp.concatenate([mean, jnp.sqrt(var)], axis=-1)


@jax.jit
def pooled_handmade(waveform: jax.Array, padding_mask: jax.Array) -> dict[str, jax.Array]:
  """{"fbank": [batch, 160], "mfcc": [batch, 78]}: mean + std of each row's real frames.

  waveform [batch, samples]; padding_mask bool [batch, samples], True = padded.
  """
  samples = waveform.shape[1]
  num_frames = max((samples - fbank.WINDOW) // (fbank.STACK * fbank.HOP) + 1, 1)
  log_mel = fbank.log_mel(waveform, num_frames, NUM_MEL_BINS)           # [batch, 2T, 80]
  lengths = jnp.sum(~padding_mask, axis=-1)
  num_real = jnp.clip((lengths - fbank.WINDOW) // fbank.HOP + 1, 1, log_mel.shape[1])
  real = jnp.arange(log_mel.shape[1])[None, :] < num_real[:, None]
  mfcc = jnp.einsum("bfm,mc->bfc", log_mel, dct_matrix(NUM_MEL_BINS, NUM_MFCC),
                    precision=jax.lax.Precision.HIGHEST)
  d1 = deltas(mfcc, num_real)
  d2 = deltas(d1, num_real)
  return {"fbank": _mean_std(log_mel, real),
          "mfcc": _mean_std(jnp.concatenate([mfcc, d1, d2], axis=-1), real)}


def handmade_features(builder, names: Sequence[str], labeler: data_lib.Labeler, *,
                      batch_size: int, max_samples: int, normalize: bool = True
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({name: float32 [1, n, P]}, labels int32 [n]) for every utterance of the splits, in the
  reading order of features.pooled_features (labels -1 for classes the labeler does not know)."""
  pooled: dict[str, list] = {name: [] for name in NAMES}
  labels = []
  for batch in data_lib.eval_batches(builder, names, labeler, batch_size=batch_size,
                                     max_samples=max_samples, normalize=normalize):
    keep = batch["example_valid"]
    out = jax.device_get(pooled_handmade(jnp.asarray(batch["waveform"]),
                                         jnp.asarray(batch["padding_mask"])))
    for name in NAMES:
      pooled[name].append(np.asarray(out[name])[keep])
    labels.append(batch["label"][keep])
  return ({name: np.concatenate(v)[None] for name, v in pooled.items()},
          np.concatenate(labels).astype(np.int32))
