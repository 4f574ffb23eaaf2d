"""BEST-RQ: filterbank against librosa, targets against a direct NumPy implementation, the loss
against a direct cross-entropy, frozen quantizer, seeds, the filterbank frontend, and the sharded
step against one device."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import optax
import pytest
import torch

from tests.configs import small_config
from tests.test_train_step import run
from xlsr_jax.models import best_rq as best_rq_model
from xlsr_jax.models import fbank
from xlsr_jax.models.config import get_preset
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.models.params import init_params
from xlsr_jax.models.wav2vec2 import Wav2Vec2Model
from xlsr_jax.objectives import best_rq
from xlsr_jax.training.optimizer import make_optimizer

SR = 16_000
TINY = get_preset("tiny").replace(num_hidden_layers=1)


def _speechlike(samples: int, seed: int, noise: float = 0.05) -> np.ndarray:
  """A few harmonics with a moving pitch plus noise: a spectrum with structure, float32."""
  rng = np.random.default_rng(seed)
  t = np.arange(samples) / SR
  pitch = 120 + 60 * np.sin(2 * np.pi * 1.5 * t + seed)
  phase = 2 * np.pi * np.cumsum(pitch) / SR
  wave = sum(np.sin(k * phase) / k for k in range(1, 6)) + noise * rng.standard_normal(samples)
  return (wave / np.std(wave)).astype(np.float32)


def _librosa_log_mel(wave: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
  """[frames, bins]: librosa's power mel spectrogram (25 ms Hann, 10 ms hop, no centering), log."""
  mel = librosa.feature.melspectrogram(y=wave.astype(np.float64), sr=SR, n_fft=400, hop_length=160,
                                       win_length=400, window="hann", center=False, power=2.0,
                                       n_mels=num_mel_bins)
  return np.log(mel.T + fbank.LOG_EPS)


def _numpy_targets(wave: np.ndarray, num_real_frames: int, num_frames: int,
                   rq: best_rq_model.BestRqConfig) -> np.ndarray:
  """The BEST-RQ recipe written out in NumPy: int [num_frames, num_codebooks] (rows past the real
  frames are the codes of zero features)."""
  log_mel = _librosa_log_mel(np.pad(wave, (0, 400)), rq.num_mel_bins)[:2 * num_frames]
  real = log_mel[:2 * num_real_frames]
  normed = np.zeros_like(log_mel)
  normed[:2 * num_real_frames] = (real - real.mean(0)) / np.sqrt(real.var(0) + fbank.NORM_EPS)
  stacked = normed.reshape(num_frames, 2 * rq.num_mel_bins)
  projection = np.asarray(best_rq_model.frozen_projection(rq), np.float64)
  codebook = np.asarray(best_rq_model.frozen_codebook(rq), np.float64)
  ids = []
  for n in range(rq.num_codebooks):
    x = stacked @ projection[n]
    x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    ids.append(np.argmax(x @ codebook[n].T, axis=-1))
  return np.stack(ids, axis=-1)


def test_log_mel_equals_librosa():
  wave = _speechlike(12_000, seed=0, noise=0.3)
  frames = frame_lengths(12_000, TINY)
  ours = np.asarray(fbank.log_mel(jnp.asarray(wave[None]), frames, 80))[0]
  ref = _librosa_log_mel(np.pad(wave, (0, 400)))[:2 * frames]
  assert ours.shape == ref.shape == (2 * frames, 80)
  # float32 FFT against librosa's float64 FFT: 3e-5 nats measured; 1e-4 allowed.
  np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("num_codebooks", [1, 2])
def test_targets_equal_a_numpy_implementation_at_the_masked_frames(num_codebooks):
  rq = best_rq_model.BestRqConfig(num_codebooks=num_codebooks, codebook_size=512, seed=3)
  samples = 16_000
  lengths = np.array([samples, 9_000], np.int32)
  waves = np.stack([_speechlike(samples, seed=1), _speechlike(samples, seed=2)])
  waves[1, lengths[1]:] = 0.0
  frames = frame_lengths(samples, TINY)
  real = np.asarray(frame_lengths(jnp.asarray(lengths), TINY))
  model = best_rq_model.BestRqForPreTraining(TINY, rq)
  indices = np.stack([np.arange(frames), np.minimum(np.arange(frames), real[1] - 1)]).astype(np.int32)
  mask = np.zeros((2, frames), bool)
  params = init_params(model, jax.random.key(0), samples)
  out = model.apply({"params": params}, jnp.asarray(waves), None, jnp.asarray(mask),
                    jnp.asarray(indices), frame_lengths=jnp.asarray(real))
  for row in range(2):
    ref = _numpy_targets(waves[row][:lengths[row]], int(real[row]), int(real[row]), rq)
    got = np.asarray(out["targets"][row])[:real[row]]
    assert got.shape == ref.shape
    # Exact ids; a near-tie between two codes may flip under float32, so at most 1% may differ.
    assert np.mean(got == ref) >= 0.99, (row, np.mean(got == ref))
  assert out["logits"].shape == (2, frames, num_codebooks, 512)


def test_cross_entropy_sums_equal_a_direct_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 7, 2, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, (3, 7, 2)).astype(np.int32)
  targets[0, :3] = logits[0, :3].argmax(-1)  # some frames right, to count accuracy
  valid = rng.random((3, 7)) < 0.7
  sums = jax.device_get(best_rq.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets),
                                                   jnp.asarray(valid)))
  ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits).reshape(-1, 11),
                                         torch.from_numpy(targets).reshape(-1).long(),
                                         reduction="none").numpy().reshape(3, 7, 2)
  np.testing.assert_allclose(sums["loss_sum"], ce.mean(-1)[valid].sum(), rtol=1e-5)
  assert sums["num_masked"] == valid.sum()
  for n in range(2):
    assert sums[f"num_correct_book{n}"] == ((logits.argmax(-1) == targets)[..., n] & valid).sum()
  perplexities = []
  for n in range(2):
    p = np.bincount(targets[..., n][valid], minlength=11) / valid.sum()
    p = p[p > 0]
    perplexities.append(np.exp(-(p * np.log(p)).sum()))
  np.testing.assert_allclose(sums["target_perplexity"], np.mean(perplexities), rtol=1e-5)
  metrics = jax.device_get(best_rq.normalize(sums))
  np.testing.assert_allclose(metrics["loss"], ce.mean(-1)[valid].mean(), rtol=1e-5)


def test_frozen_parameters_get_no_update_no_decay_and_no_optimizer_state():
  """AdamW's weight decay moves a parameter whose gradient is zero; the objective's frozen ones
  must not move (lingvo#312)."""
  config = small_config().optimizer
  config.weight_decay = 0.5
  params = {"random_quantizer": {"codebook": jnp.ones((4, 3))}, "wav2vec2": {"w": jnp.ones((4, 3))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  for frozen, moved in (((), True), ((r"^random_quantizer/",), False)):
    optimizer, _ = make_optimizer(config, 100, frozen=frozen)
    state = optimizer.init(params)
    updated = params
    for _ in range(5):
      updates, state = optimizer.update(grads, state, updated)
      updated = optax.apply_updates(updated, updates)
    assert bool(jnp.any(updated["random_quantizer"]["codebook"] != 1.0)) == moved
    assert bool(jnp.any(updated["wav2vec2"]["w"] != 1.0))  # decayed either way
    shapes = [x.shape for x in jax.tree.leaves(state)]
    assert shapes.count((4, 3)) == (4 if moved else 2)  # Adam's mu and nu per trained parameter


def test_quantizer_comes_from_the_config_seed_not_the_init_key():
  rq = best_rq_model.BestRqConfig(codebook_size=64)
  model = best_rq_model.BestRqForPreTraining(TINY, rq)
  a = nn.unbox(init_params(model, jax.random.key(0)))
  b = nn.unbox(init_params(model, jax.random.key(1)))
  jax.tree.map(np.testing.assert_array_equal, a["random_quantizer"], b["random_quantizer"])
  assert not np.array_equal(a["heads"]["kernel"], b["heads"]["kernel"])
  other = nn.unbox(init_params(best_rq_model.BestRqForPreTraining(
      TINY, best_rq_model.BestRqConfig(codebook_size=64, seed=1)), jax.random.key(0)))
  assert not np.array_equal(a["random_quantizer"]["codebook"], other["random_quantizer"]["codebook"])
  np.testing.assert_allclose(np.linalg.norm(a["random_quantizer"]["codebook"], axis=-1), 1.0, rtol=1e-6)
  bound = np.sqrt(6 / (rq.input_dim + rq.codebook_dim))  # Xavier uniform
  projection = a["random_quantizer"]["projection"]
  assert projection.shape == (1, 160, 16) and np.abs(projection).max() <= bound
  assert np.abs(projection).max() > 0.9 * bound


def test_padding_does_not_change_features_or_targets_of_real_frames():
  """Normalisation over each row's real frames only: a row padded with zeros gives the frames of
  the same audio alone (the fbank frontend's encoder output and BEST-RQ's targets)."""
  config = TINY.replace(frontend="fbank")
  rq = best_rq_model.BestRqConfig(codebook_size=256)
  wave = _speechlike(9_600, seed=4)
  padded = np.concatenate([wave, np.zeros(6_400, np.float32)])
  batch = np.stack([padded, _speechlike(16_000, seed=5)])
  padding_mask = np.zeros(batch.shape, bool)
  padding_mask[0, 9_600:] = True
  model = best_rq_model.BestRqForPreTraining(config, rq)
  params = init_params(model, jax.random.key(0))
  real = frame_lengths(9_600, config)

  def apply(waveform, mask, frames):
    idx = np.arange(frames)[None].repeat(len(waveform), 0).astype(np.int32)
    return model.apply({"params": params}, jnp.asarray(waveform), jnp.asarray(mask),
                       jnp.zeros(idx.shape, bool), jnp.asarray(idx))

  alone = apply(wave[None], np.zeros((1, 9_600), bool), real)
  both = apply(batch, padding_mask, frame_lengths(16_000, config))
  np.testing.assert_array_equal(np.asarray(both["targets"][0, :real]), np.asarray(alone["targets"][0]))
  np.testing.assert_allclose(np.asarray(both["last_hidden_state"][0, :real]),
                             np.asarray(alone["last_hidden_state"][0]), atol=2e-5)


def test_fbank_frontend_has_no_cnn_and_the_waveform_frontend_keeps_it():
  params = nn.unbox(init_params(Wav2Vec2Model(TINY.replace(frontend="fbank")), jax.random.key(0)))
  assert "feature_extractor" not in params
  assert params["feature_projection"]["projection"]["kernel"].shape == (160, 64)
  assert "feature_extractor" in nn.unbox(init_params(Wav2Vec2Model(TINY), jax.random.key(0)))
  with pytest.raises(ValueError, match="frontend 'fbank' stacks two 10 ms frames"):
    TINY.replace(frontend="fbank", conv_stride=(5, 2, 2, 2, 2, 2, 1))


def _best_rq_config(**changes):
  c = small_config()
  c.objective.name = "best_rq"
  c.objective.best_rq.codebook_size = 256
  c.objective.best_rq.num_codebooks = 2
  c.optimizer.weight_decay = 0.1
  for key, value in changes.items():
    c.model[key] = value
  return c


@pytest.fixture(scope="module")
def best_rq_runs():
  return run(_best_rq_config(), (1, 1, 1), steps=2), run(_best_rq_config(), (2, 2, 2), steps=2)


def test_sharded_best_rq_step_equals_one_device_and_keeps_the_quantizer(best_rq_runs):
  (t1, s1, m1), (_, s8, m8) = best_rq_runs
  for a, b in zip(m1, m8):
    assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
    assert a["num_masked"] == b["num_masked"] and a["target_perplexity"] == b["target_perplexity"]
  assert {"accuracy_book0", "accuracy_book1", "target_perplexity"} <= set(m1[0])
  p1, p8 = jax.device_get(nn.unbox(s1.params)), jax.device_get(nn.unbox(s8.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), p1, p8)
  fresh = jax.device_get(nn.unbox(t1.create_state().params))
  jax.tree.map(np.testing.assert_array_equal, fresh["random_quantizer"], p1["random_quantizer"])
  assert not np.allclose(fresh["heads"]["kernel"], p1["heads"]["kernel"])
  # The loss is ~log(256) at the start and the targets use many codes.
  assert abs(m1[0]["loss"] - np.log(256)) < 0.5 and m1[0]["target_perplexity"] > 20


@pytest.mark.slow
def test_fbank_frontend_trains():
  _, state, metrics = run(_best_rq_config(frontend="fbank"), (1, 1, 1), steps=2)
  assert all(np.isfinite(m["loss"]) for m in metrics)
  assert "feature_extractor" not in state.params["wav2vec2"]
