"""Hand-made-feature baselines of the probes: FBANK and MFCC (+ deltas) pooled over real frames,
against librosa and scipy on the same audio."""
import jax.numpy as jnp
import librosa
import numpy as np
import scipy.fft

from xlsr_jax.downstream import handmade
from xlsr_jax.models import fbank

SR = 16_000


def _audio(samples: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(samples) / SR
  wave = np.sin(2 * np.pi * (150 + 50 * t) * t) + 0.3 * rng.standard_normal(samples)
  return wave.astype(np.float32)


def _reference(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(fbank mean+std [160], mfcc+deltas mean+std [78]) with librosa / scipy, float64."""
  mel = librosa.feature.melspectrogram(y=wave.astype(np.float64), sr=SR, n_fft=400, hop_length=160,
                                       win_length=400, window="hann", center=False, n_mels=80)
  log_mel = np.log(mel + fbank.LOG_EPS)                                    # [80, frames]
  mfcc = scipy.fft.dct(log_mel, axis=0, norm="ortho")[:13]
  d1 = librosa.feature.delta(mfcc, width=9, order=1, mode="nearest")
  d2 = librosa.feature.delta(d1, width=9, order=1, mode="nearest")
  stats = lambda x: np.concatenate([x.mean(axis=1), x.std(axis=1)])
  return stats(log_mel), stats(np.concatenate([mfcc, d1, d2]))


def test_pooled_fbank_and_mfcc_equal_librosa_over_each_rows_real_frames():
  long, short = _audio(24_000, 0), _audio(13_000, 1)
  batch = np.zeros((2, 24_000), np.float32)
  batch[0], batch[1, :13_000] = long, short
  padding = np.zeros(batch.shape, bool)
  padding[1, 13_000:] = True
  out = handmade.pooled_handmade(jnp.asarray(batch), jnp.asarray(padding))
  assert out["fbank"].shape == (2, 160) and out["mfcc"].shape == (2, 78)
  for row, wave in enumerate((long, short)):
    ref_fbank, ref_mfcc = _reference(wave)
    np.testing.assert_allclose(np.asarray(out["fbank"][row]), ref_fbank, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(out["mfcc"][row]), ref_mfcc, atol=2e-3, rtol=1e-3)
  # The padded row's statistics are its audio's alone, not diluted by the zeros after it.
  alone = handmade.pooled_handmade(jnp.asarray(short[None]), jnp.zeros((1, 13_000), bool))
  np.testing.assert_allclose(np.asarray(out["mfcc"][1]), np.asarray(alone["mfcc"][0]), atol=1e-4)


def test_dct_matrix_is_scipys_orthonormal_dct():
  x = np.random.default_rng(0).standard_normal((5, 80))
  np.testing.assert_allclose(x @ handmade.dct_matrix(80, 13),
                             scipy.fft.dct(x, axis=-1, norm="ortho")[:, :13], atol=1e-5)
