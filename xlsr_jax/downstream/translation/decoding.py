"""Autoregressive decoding for `SpeechToText`: greedy and beam search, jitted with static shapes.

Every function takes the encoder output (states [batch, frames, d_model], valid bool [batch,
frames]) and returns tokens int32 [batch, max_length]: the generated tokens after the decoder start
token, the end-of-sentence token included, `pad_token_id` after it. With `use_cache=True` each step
feeds one token and reads the keys/values of the earlier ones from a static-size cache
(text_decoder.init_cache); with `use_cache=False` every step recomputes the whole (static-length)
prefix, the reference the cache is tested and benchmarked against. A loop stops early once every
sequence is finished (`lax.while_loop`), so the cost follows the longest output, not max_length.

Beam search follows transformers' BeamSearchScorer: a finished hypothesis scores
sum(log p) / generated_length ** length_penalty (its end token counted); hypotheses still alive at
max_length are scored the same way; the search stops when no alive beam can beat the worst of the
`beam_width` finished ones.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xlsr_jax.models.speech_translation import SpeechToText, SpeechTranslationConfig
from xlsr_jax.models.text_decoder import init_cache

NEG_INF = -1.0e9


@functools.partial(jax.jit, static_argnums=0)
def encode(config: SpeechTranslationConfig, params: dict, waveform: jax.Array,
           padding_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(states [batch, frames', d_model], valid [batch, frames']) in inference mode."""
  return SpeechToText(config).apply({"params": params}, waveform, padding_mask,
                                    method=SpeechToText.encode)


def _decode(config, params, tokens, states, valid, cache=None, index=0):
  return SpeechToText(config).apply({"params": params}, tokens, states, valid, cache=cache,
                                    index=index, method=SpeechToText.decode)


def _check_length(config: SpeechTranslationConfig, max_length: int) -> None:
  limit = config.decoder.max_position_embeddings - 1
  if not 1 <= max_length <= limit:
    raise ValueError(f"max_length={max_length} must be in [1, {limit}] (the decoder has "
                     f"{config.decoder.max_position_embeddings} positions, one for the start token)")


def _choose_first(logits: jax.Array, step: jax.Array, forced_bos_token_id: int) -> jax.Array:
  """Log-probabilities [n, vocab]; at step 0 only `forced_bos_token_id` is allowed (if >= 0)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if forced_bos_token_id < 0:
    return log_probs
  forced = jnp.full_like(log_probs, NEG_INF).at[:, forced_bos_token_id].set(0.0)
  return jnp.where(step == 0, forced, log_probs)


@functools.partial(jax.jit, static_argnames=("config", "max_length", "use_cache",
                                             "forced_bos_token_id"))
def greedy_search(config: SpeechTranslationConfig, params: dict, states: jax.Array,
                  valid: jax.Array, *, max_length: int, use_cache: bool = True,
                  forced_bos_token_id: int = -1) -> jax.Array:
  """Greedy decoding: tokens int32 [batch, max_length] (see the module docstring)."""
  _check_length(config, max_length)
  dec = config.decoder
  batch = states.shape[0]
  tokens = jnp.full((batch, max_length + 1), dec.pad_token_id, jnp.int32)
  tokens = tokens.at[:, 0].set(dec.decoder_start_token_id)
  finished = jnp.zeros((batch,), bool)

  def pick(logits, i, tokens, finished):
    log_probs = _choose_first(logits, i, forced_bos_token_id)
    nxt = jnp.where(finished, dec.pad_token_id, jnp.argmax(log_probs, -1).astype(jnp.int32))
    return tokens.at[:, i + 1].set(nxt), finished | (nxt == dec.eos_token_id)

  if use_cache:
    cache = init_cache(dec, batch, max_length + 1, states.shape[1])
    logits, cache = _decode(config, params, tokens[:, :1], states, valid, cache, 0)
    tokens, finished = pick(logits[:, -1], 0, tokens, finished)

    def body(carry):
      i, tokens, finished, cache = carry
      step_tokens = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
      logits, cache = _decode(config, params, step_tokens, None, valid, cache, i)
      tokens, finished = pick(logits[:, -1], i, tokens, finished)
      return i + 1, tokens, finished, cache

    cond = lambda c: (c[0] < max_length) & ~jnp.all(c[2])
    _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), tokens, finished, cache))
  else:
    def body(carry):
      i, tokens, finished = carry
      logits, _ = _decode(config, params, tokens[:, :max_length], states, valid)
      step_logits = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
      tokens, finished = pick(step_logits, i, tokens, finished)
      return i + 1, tokens, finished

    cond = lambda c: (c[0] < max_length) & ~jnp.all(c[2])
    _, tokens, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, finished))
  return tokens[:, 1:]


def _length_norm(score: jax.Array, length: jax.Array | int, length_penalty: float) -> jax.Array:
  return score / (jnp.asarray(length, jnp.float32) ** length_penalty)


@functools.partial(jax.jit, static_argnames=("config", "max_length", "beam_width",
                                             "length_penalty", "use_cache", "forced_bos_token_id"))
def beam_search(config: SpeechTranslationConfig, params: dict, states: jax.Array, valid: jax.Array,
                *, max_length: int, beam_width: int = 5, length_penalty: float = 1.0,
                use_cache: bool = True, forced_bos_token_id: int = -1
                ) -> tuple[jax.Array, jax.Array]:
  """(best tokens int32 [batch, max_length], its score float32 [batch]); see the module docstring."""
  _check_length(config, max_length)
  if beam_width < 1:
    raise ValueError(f"beam_width must be >= 1, got {beam_width}")
  dec = config.decoder
  batch, frames, k, vocab = states.shape[0], states.shape[1], beam_width, dec.vocab_size
  length = max_length + 1
  flat_states = jnp.repeat(states, k, axis=0)  # [batch * k, frames, d]
  flat_valid = jnp.repeat(valid, k, axis=0)
  seqs = jnp.full((batch, k, length), dec.pad_token_id, jnp.int32).at[:, :, 0].set(
      dec.decoder_start_token_id)
  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  fin_seqs = seqs
  fin_scores = jnp.full((batch, k), NEG_INF, jnp.float32)

  def gather(x, idx):  # x [batch, beams, ...], idx [batch, n] -> [batch, n, ...]
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def advance(i, logits, seqs, alive_logp, fin_seqs, fin_scores):
    """One step from the logits of position i: (new alive seqs, logp, their source beams, finished)."""
    log_probs = _choose_first(logits, i, forced_bos_token_id).reshape(batch, k, vocab)
    cand = (alive_logp[:, :, None] + log_probs).reshape(batch, k * vocab)
    top_scores, top_idx = jax.lax.top_k(cand, 2 * k)
    src, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    cand_seqs = gather(seqs, src).at[:, :, i + 1].set(token)
    is_eos = token == dec.eos_token_id
    # Alive: the best k candidates that did not end.
    alive_scores, alive_pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), k)
    new_seqs, new_src = gather(cand_seqs, alive_pick), gather(src, alive_pick)
    # Finished: merge the ended candidates with the finished set, keep the best k.
    ended = jnp.where(is_eos, _length_norm(top_scores, i + 1, length_penalty), NEG_INF)
    ended = jnp.where(top_scores <= NEG_INF / 2, NEG_INF, ended)
    all_scores = jnp.concatenate([fin_scores, ended], axis=1)
    all_seqs = jnp.concatenate([fin_seqs, cand_seqs], axis=1)
    fin_scores, fin_pick = jax.lax.top_k(all_scores, k)
    return new_seqs, alive_scores, new_src, gather(all_seqs, fin_pick), fin_scores

  def done(i, alive_logp, fin_scores):
    """No alive beam can still beat the worst finished one (per batch row), or max_length."""
    bound_length = max_length if length_penalty > 0 else i + 1
    best_alive = _length_norm(jnp.max(alive_logp, axis=1), bound_length, length_penalty)
    settled = (jnp.min(fin_scores, axis=1) > NEG_INF / 2) & (jnp.min(fin_scores, axis=1) >= best_alive)
    return (i >= max_length) | jnp.all(settled)

  def reorder(cache, src):  # cache arrays [layers, batch * k, ...]; src [batch, k]
    """Self-attention keys/values follow their beams; the cross-attention ones are the same for
    every beam of an utterance (beams never move across utterances), so they stay."""
    flat_src = (src + jnp.arange(batch)[:, None] * k).reshape(-1)
    return {name: jnp.take(c, flat_src, axis=1) if name.startswith("self_") else c
            for name, c in cache.items()}

  if use_cache:
    cache = init_cache(dec, batch * k, length, frames)
    logits, cache = _decode(config, params, seqs[:, :, :1].reshape(batch * k, 1), flat_states,
                            flat_valid, cache, 0)
    seqs, alive_logp, src, fin_seqs, fin_scores = advance(0, logits[:, -1], seqs, alive_logp,
                                                          fin_seqs, fin_scores)
    cache = reorder(cache, src)

    def body(carry):
      i, seqs, alive_logp, fin_seqs, fin_scores, cache = carry
      step_tokens = jax.lax.dynamic_slice_in_dim(seqs, i, 1, axis=2).reshape(batch * k, 1)
      logits, cache = _decode(config, params, step_tokens, None, flat_valid, cache, i)
      seqs, alive_logp, src, fin_seqs, fin_scores = advance(i, logits[:, -1], seqs, alive_logp,
                                                            fin_seqs, fin_scores)
      return i + 1, seqs, alive_logp, fin_seqs, fin_scores, reorder(cache, src)

    cond = lambda c: ~done(c[0], c[2], c[4])
    carry = (jnp.int32(1), seqs, alive_logp, fin_seqs, fin_scores, cache)
    _, seqs, alive_logp, fin_seqs, fin_scores, _ = jax.lax.while_loop(cond, body, carry)
  else:
    def body(carry):
      i, seqs, alive_logp, fin_seqs, fin_scores = carry
      logits, _ = _decode(config, params, seqs[:, :, :max_length].reshape(batch * k, max_length),
                          flat_states, flat_valid)
      step_logits = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
      seqs, alive_logp, _, fin_seqs, fin_scores = advance(i, step_logits, seqs, alive_logp,
                                                          fin_seqs, fin_scores)
      return i + 1, seqs, alive_logp, fin_seqs, fin_scores

    cond = lambda c: ~done(c[0], c[2], c[4])
    carry = (jnp.int32(0), seqs, alive_logp, fin_seqs, fin_scores)
    _, seqs, alive_logp, fin_seqs, fin_scores = jax.lax.while_loop(cond, body, carry)
  return finalize_beams(seqs, alive_logp, fin_seqs, fin_scores, max_length, length_penalty)


def finalize_beams(seqs: jax.Array, alive_logp: jax.Array, fin_seqs: jax.Array,
                   fin_scores: jax.Array, max_length: int, length_penalty: float
                   ) -> tuple[jax.Array, jax.Array]:
  """(best tokens [batch, max_length], its score [batch]) over finished and alive beams; beams
  alive at max_length count as hypotheses of full length (transformers' finalize)."""
  alive_scores = jnp.where(alive_logp <= NEG_INF / 2, NEG_INF,
                           _length_norm(alive_logp, max_length, length_penalty))
  all_scores = jnp.concatenate([fin_scores, alive_scores], axis=1)
  best = jnp.argmax(all_scores, axis=1)
  best_seq = jnp.take_along_axis(jnp.concatenate([fin_seqs, seqs], axis=1),
                                 best[:, None, None], axis=1)[:, 0]
  return best_seq[:, 1:], jnp.max(all_scores, axis=1)
