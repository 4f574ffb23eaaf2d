"""Greedy and beam search: the cache changes nothing, beam 1 is greedy, scores are the model's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlsr_jax.downstream.translation import decoding
from xlsr_jax.models.speech_translation import SpeechToText, shift_tokens_right, translation_preset

MAX_LEN = 12


@pytest.fixture(scope="module")
def setup():
  cfg = translation_preset("tiny", "tiny", decoder={"vocab_size": 50, "max_position_embeddings": 16})
  model = SpeechToText(cfg)
  wave = jax.random.normal(jax.random.key(1), (3, 8000))
  padding = jnp.arange(8000)[None, :] >= jnp.array([8000, 5000, 6400])[:, None]
  params = jax.jit(model.init)(jax.random.key(0), wave, padding, jnp.zeros((3, 4), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  # Make the end token likely enough that sequences end at different lengths.
  embed = params["decoder"]["embed_tokens"]
  params["decoder"]["embed_tokens"] = embed.at[cfg.decoder.eos_token_id].multiply(6.0)
  states, valid = decoding.encode(cfg, params, wave, padding)
  return cfg, params, states, valid


def _sequence_logprob(cfg, params, states, valid, tokens):
  """Sum of log p of each row's tokens up to and including its end token, and that length."""
  dec = cfg.decoder
  ended = np.cumsum(np.asarray(tokens) == dec.eos_token_id, axis=1)
  keep = (ended == 0) | ((ended == 1) & (np.asarray(tokens) == dec.eos_token_id))
  labels = jnp.where(keep, tokens, -100)
  inputs = shift_tokens_right(labels, dec.pad_token_id, dec.decoder_start_token_id)
  logits, _ = SpeechToText(cfg).apply({"params": params}, inputs, states, valid,
                                      method=SpeechToText.decode)
  logp = jax.nn.log_softmax(logits, -1)
  picked = jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
  return np.asarray(jnp.sum(jnp.where(keep, picked, 0.0), 1)), keep.sum(1)


def test_cached_greedy_equals_recomputed_greedy(setup):
  cfg, params, states, valid = setup
  cached = decoding.greedy_search(cfg, params, states, valid, max_length=MAX_LEN)
  recomputed = decoding.greedy_search(cfg, params, states, valid, max_length=MAX_LEN, use_cache=False)
  np.testing.assert_array_equal(cached, recomputed)
  lengths = (np.asarray(cached) != cfg.decoder.pad_token_id).sum(1)
  assert lengths.min() < MAX_LEN and cached.shape == (3, MAX_LEN)  # some rows ended early
  eos = cfg.decoder.eos_token_id
  for row in np.asarray(cached):  # after the end token: padding only
    if eos in row:
      assert np.all(row[list(row).index(eos) + 1:] == cfg.decoder.pad_token_id)


def test_beam_one_equals_greedy_and_cache_changes_nothing(setup):
  cfg, params, states, valid = setup
  greedy = decoding.greedy_search(cfg, params, states, valid, max_length=MAX_LEN)
  beam1, _ = decoding.beam_search(cfg, params, states, valid, max_length=MAX_LEN, beam_width=1,
                                  length_penalty=0.0)
  np.testing.assert_array_equal(beam1, greedy)
  beam4, score4 = decoding.beam_search(cfg, params, states, valid, max_length=MAX_LEN, beam_width=4)
  beam4_nc, score4_nc = decoding.beam_search(cfg, params, states, valid, max_length=MAX_LEN,
                                             beam_width=4, use_cache=False)
  np.testing.assert_array_equal(beam4, beam4_nc)
  np.testing.assert_allclose(score4, score4_nc, rtol=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_score_is_the_models_length_normalised_logprob(setup, length_penalty):
  cfg, params, states, valid = setup
  tokens, score = decoding.beam_search(cfg, params, states, valid, max_length=MAX_LEN,
                                       beam_width=4, length_penalty=length_penalty)
  logprob, length = _sequence_logprob(cfg, params, states, valid, tokens)
  np.testing.assert_allclose(score, logprob / length.astype(np.float64) ** length_penalty, rtol=1e-4)
  greedy = decoding.greedy_search(cfg, params, states, valid, max_length=MAX_LEN)
  g_logprob, g_length = _sequence_logprob(cfg, params, states, valid, greedy)
  g_score = g_logprob / g_length.astype(np.float64) ** length_penalty
  assert np.all(np.asarray(score) >= g_score - 1e-5)  # the beam found at least greedy's score here


def test_forced_first_token_and_length_check(setup):
  cfg, params, states, valid = setup
  out = decoding.greedy_search(cfg, params, states, valid, max_length=MAX_LEN, forced_bos_token_id=7)
  assert np.all(np.asarray(out)[:, 0] == 7)
  beam, _ = decoding.beam_search(cfg, params, states, valid, max_length=MAX_LEN, beam_width=3,
                                 forced_bos_token_id=7)
  assert np.all(np.asarray(beam)[:, 0] == 7)
  with pytest.raises(ValueError, match="max_length=16 must be in"):
    decoding.greedy_search(cfg, params, states, valid, max_length=16)


@pytest.mark.slow
def test_the_model_learns_from_the_audio():
  """Four noise waveforms with four different targets (first tokens included): only the encoder
  output tells them apart, so fitting them proves the cross-attention path trains end to end."""
  import optax
  from xlsr_jax.models.speech_translation import label_smoothed_cross_entropy
  cfg = translation_preset("tiny", "tiny", decoder={"vocab_size": 20, "max_position_embeddings": 16})
  model = SpeechToText(cfg)
  wave = jax.random.normal(jax.random.key(3), (4, 8000))
  labels = jnp.array([[5, 6, 7, 2], [8, 9, 2, -100], [10, 5, 11, 2], [12, 13, 14, 2]])
  params = jax.jit(model.init)(jax.random.key(0), wave)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
  opt = optax.adam(2e-3)

  @jax.jit
  def step(p, s):
    def loss_fn(p):
      out = model.apply({"params": p}, wave, None, shift_tokens_right(labels, 1, 2))
      return label_smoothed_cross_entropy(out["logits"], labels)[0]
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  state = opt.init(params)
  for _ in range(120):
    params, state, loss = step(params, state)
  assert float(loss) < 0.1
  states, valid = decoding.encode(cfg, params, wave, None)
  out = np.asarray(decoding.greedy_search(cfg, params, states, valid, max_length=6))
  expected = np.where(np.asarray(labels) < 0, cfg.decoder.pad_token_id, np.asarray(labels))
  np.testing.assert_array_equal(out[:, :4], expected)
