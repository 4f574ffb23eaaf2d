"""Log-mel filterbank frames of a waveform, aligned with the encoder's 20 ms frames.

BEST-RQ's targets (objectives/best_rq.py) and the filterbank frontend (`Wav2Vec2Config.frontend =
"fbank"`) read the same features: 25 ms Hann windows every 10 ms (400 / 160 samples at 16 kHz, no
centering), power spectrum (XLA's FFT: 10x faster on CPU than the DFT as a matmul, measured on
8 x 3 s), librosa's Slaney mel filters (a constant; matmul at precision HIGHEST), log, normalised
per utterance over its real frames, then STACK frames stacked so that encoder frame t (samples
[320 t, 320 t + 400)) gets filterbank frames 2t and 2t + 1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16_000
WINDOW = 400      # 25 ms
HOP = 160         # 10 ms
STACK = 2         # filterbank frames per encoder frame (20 ms = 320 samples)
LOG_EPS = 1e-6    # log(mel power + eps)
NORM_EPS = 1e-5   # std floor of the per-utterance normalisation


@functools.lru_cache(maxsize=None)
def hann_window(window: int = WINDOW) -> np.ndarray:
  """The periodic Hann window (librosa's "hann"), float32 [window]."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def mel_matrix(num_mel_bins: int, window: int = WINDOW) -> np.ndarray:
  """librosa.filters.mel (Slaney scale and norm) for n_fft = window: float32 [bins, num_mel_bins]."""
  import librosa  # pylint: disable=import-outside-toplevel  (optional at import time)
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=window, n_mels=num_mel_bins).T.astype(np.float32)


def num_fbank_frames(num_frames: int) -> int:
  """Filterbank frames read for `num_frames` encoder frames."""
  return STACK * num_frames


def log_mel(waveform: jax.Array, num_frames: int, num_mel_bins: int) -> jax.Array:
  """float32 [batch, STACK * num_frames, num_mel_bins]: log-mel of frames starting every HOP samples.

  waveform [batch, samples] is zero-padded at the end when the last frame needs it (the last
  encoder frame's second filterbank frame reaches 160 samples past its receptive field).
  """
  frames = num_fbank_frames(num_frames)
  needed = (frames - 1) * HOP + WINDOW
  x = waveform.astype(jnp.float32)
  if x.shape[1] < needed:
    x = jnp.pad(x, ((0, 0), (0, needed - x.shape[1])))
  starts = np.arange(frames) * HOP
  windows = x[:, starts[:, None] + np.arange(WINDOW)[None, :]] * hann_window()  # [batch, F, WINDOW]
  spectrum = jnp.fft.rfft(windows, axis=-1)
  power = jnp.square(jnp.real(spectrum)) + jnp.square(jnp.imag(spectrum))
  mel = jnp.einsum("bfk,km->bfm", power, mel_matrix(num_mel_bins),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + LOG_EPS)


def normalize_utterances(features: jax.Array, num_real: jax.Array) -> jax.Array:
  """Zero mean, unit variance per utterance and bin over each row's first `num_real` frames.

  features [batch, F, bins]; num_real int [batch]. Frames past a row's end become 0.
  """
  real = (jnp.arange(features.shape[1])[None, :] < num_real[:, None])[..., None]
  count = jnp.maximum(num_real, 1).astype(jnp.float32)[:, None, None]
  mean = jnp.sum(jnp.where(real, features, 0.0), axis=1, keepdims=True) / count
  var = jnp.sum(jnp.where(real, jnp.square(features - mean), 0.0), axis=1, keepdims=True) / count
  return jnp.where(real, (features - mean) * jax.lax.rsqrt(var + NORM_EPS), 0.0)


def stacked_log_mel(waveform: jax.Array, num_frames: int, frame_lengths: jax.Array | None,
                    num_mel_bins: int) -> jax.Array:
  """float32 [batch, num_frames, STACK * num_mel_bins]: normalised log-mel stacked to encoder frames.

  frame_lengths int [batch]: real encoder frames per row (None: every frame is real).
  """
  batch = waveform.shape[0]
  if frame_lengths is None:
    frame_lengths = jnp.full((batch,), num_frames, jnp.int32)
  features = normalize_utterances(log_mel(waveform, num_frames, num_mel_bins),
                                  STACK * jnp.minimum(frame_lengths, num_frames))
  return features.reshape(batch, num_frames, STACK * num_mel_bins)
