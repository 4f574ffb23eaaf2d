"""Translation decoding speed: greedy and beam search with the key/value cache against recomputing
the prefix decoded so far at every step (no cache).

  python -m benchmarks.decoding --workdir=W --data_dir=D    # a trained model on its test audio
  python -m benchmarks.decoding                             # random weights (6 x 256 decoder)

The cached side is `decoding.greedy_search` / `beam_search` as the translation task runs them. The
baseline is the same search where step i runs the decoder over tokens[:, :i + 1] only (one branch
per prefix length under `lax.switch`, so nothing beyond the prefix so far is computed) and takes
the last position's logits. For reference, `use_cache=False` (the library's uncached path: the
whole max_length sequence through the decoder at every step) is timed too. The end token is live: a search stops when every hypothesis has ended
(greedy) or no alive beam can win (beam), on both sides, so the figure is the cost of the outputs
the model really produces. All three must return the same tokens (checked).

With --workdir, W is a `python -m xlsr_jax.evaluate --config=experiments/downstream/ast*.py`
workdir: its W/model export and the first --batch utterances of the test split are used. Encoding
is done once, outside the timing. Writes benchmarks/results/decoding_cpu.json (with --out).
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import machine_load, spread
from benchmarks.provenance import provenance, write_results
from xlsr_jax.downstream.translation import decoding
from xlsr_jax.downstream.translation.decoding import NEG_INF, _check_length, _choose_first, _length_norm
from xlsr_jax.models.speech_translation import SpeechToText, translation_preset

_WORKDIR = flags.DEFINE_string("workdir", None, "An ast evaluate workdir (its W/model is used); "
                               "default: random weights.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir of the workdir's corpus.")
_CORPUS = flags.DEFINE_string("corpus", "synthetic_speech/translation", "Corpus (name/config).")
_LANGUAGES = flags.DEFINE_list("languages", ["de", "fr"], "Test languages.")
_ENCODER = flags.DEFINE_string("encoder", "tiny", "Encoder preset (random weights).")
_LAYERS = flags.DEFINE_integer("decoder_layers", 6, "Decoder layers (random weights).")
_WIDTH = flags.DEFINE_integer("d_model", 256, "Decoder width (random weights).")
_VOCAB = flags.DEFINE_integer("vocab", 1000, "Decoder vocabulary (random weights).")
_BATCH = flags.DEFINE_integer("batch", 8, "Utterances per call.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Audio seconds per utterance (random weights).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 48, "Most generated tokens per utterance.")
_BEAMS = flags.DEFINE_list("beams", ["1", "5"], "Beam widths; 1 = greedy search.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions per mode.")
_OUT = flags.DEFINE_string("out", None, "Results file name under benchmarks/results/ "
                           "(e.g. decoding_cpu.json); default: print only.")


def _prefix_logits(config, params, tokens, states, valid, i, max_length):
  """Logits [n, vocab] of position i computed from tokens[:, :i + 1] only."""
  def branch(length, tokens, states, valid):
    logits, _ = decoding._decode(config, params, tokens[:, :length], states, valid)
    return logits[:, -1]
  branches = [functools.partial(branch, n) for n in range(1, max_length + 1)]
  return jax.lax.switch(i, branches, tokens, states, valid)


@functools.partial(jax.jit, static_argnames=("config", "max_length", "forced_bos_token_id"))
def greedy_prefix(config, params, states, valid, *, max_length: int, forced_bos_token_id: int = -1):
  """`decoding.greedy_search` with every step recomputing the prefix so far (no cache)."""
  _check_length(config, max_length)
  dec = config.decoder
  batch = states.shape[0]
  tokens = jnp.full((batch, max_length + 1), dec.pad_token_id, jnp.int32)
  tokens = tokens.at[:, 0].set(dec.decoder_start_token_id)

  def body(carry):
    i, tokens, finished = carry
    logits = _prefix_logits(config, params, tokens, states, valid, i, max_length)
    log_probs = _choose_first(logits, i, forced_bos_token_id)
    nxt = jnp.where(finished, dec.pad_token_id, jnp.argmax(log_probs, -1).astype(jnp.int32))
    return i + 1, tokens.at[:, i + 1].set(nxt), finished | (nxt == dec.eos_token_id)

  cond = lambda c: (c[0] < max_length) & ~jnp.all(c[2])
  _, tokens, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, jnp.zeros((batch,), bool)))
  return tokens[:, 1:]


@functools.partial(jax.jit, static_argnames=("config", "max_length", "beam_width",
                                             "length_penalty", "forced_bos_token_id"))
def beam_prefix(config, params, states, valid, *, max_length: int, beam_width: int = 5,
                length_penalty: float = 1.0, forced_bos_token_id: int = -1):
  """`decoding.beam_search` (its scoring and stopping rule) with every step recomputing the prefix
  so far (no cache): best tokens [batch, max_length]."""
  _check_length(config, max_length)
  dec = config.decoder
  batch, k, vocab = states.shape[0], beam_width, dec.vocab_size
  flat_states, flat_valid = jnp.repeat(states, k, axis=0), jnp.repeat(valid, k, axis=0)
  seqs = jnp.full((batch, k, max_length + 1), dec.pad_token_id, jnp.int32).at[:, :, 0].set(
      dec.decoder_start_token_id)
  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  fin_seqs, fin_scores = seqs, jnp.full((batch, k), NEG_INF, jnp.float32)

  def gather(x, idx):
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def body(carry):
    i, seqs, alive_logp, fin_seqs, fin_scores = carry
    logits = _prefix_logits(config, params, seqs.reshape(batch * k, -1), flat_states, flat_valid,
                            i, max_length)
    log_probs = _choose_first(logits, i, forced_bos_token_id).reshape(batch, k, vocab)
    cand = (alive_logp[:, :, None] + log_probs).reshape(batch, k * vocab)
    top_scores, top_idx = jax.lax.top_k(cand, 2 * k)
    src, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    cand_seqs = gather(seqs, src).at[:, :, i + 1].set(token)
    is_eos = token == dec.eos_token_id
    alive_scores, alive_pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), k)
    ended = jnp.where(is_eos, _length_norm(top_scores, i + 1, length_penalty), NEG_INF)
    ended = jnp.where(top_scores <= NEG_INF / 2, NEG_INF, ended)
    all_scores = jnp.concatenate([fin_scores, ended], axis=1)
    all_seqs = jnp.concatenate([fin_seqs, cand_seqs], axis=1)
    fin_scores, fin_pick = jax.lax.top_k(all_scores, k)
    return i + 1, gather(cand_seqs, alive_pick), alive_scores, gather(all_seqs, fin_pick), fin_scores

  def cond(c):
    i, _, alive_logp, _, fin_scores = c
    bound_length = max_length if length_penalty > 0 else i + 1
    best_alive = _length_norm(jnp.max(alive_logp, axis=1), bound_length, length_penalty)
    worst = jnp.min(fin_scores, axis=1)
    settled = (worst > NEG_INF / 2) & (worst >= best_alive)
    return ~((i >= max_length) | jnp.all(settled))

  carry = (jnp.int32(0), seqs, alive_logp, fin_seqs, fin_scores)
  _, seqs, alive_logp, fin_seqs, fin_scores = jax.lax.while_loop(cond, body, carry)
  return decoding.finalize_beams(seqs, alive_logp, fin_seqs, fin_scores, max_length,
                                 length_penalty)[0]


def generated_lengths(tokens: np.ndarray, eos: int) -> np.ndarray:
  """Tokens each utterance generated, its end token included (max_length if it never ended)."""
  ended = tokens == eos
  return np.where(ended.any(1), ended.argmax(1) + 1, tokens.shape[1])


def _model_and_audio():
  """(config, params, waveform, padding mask or None, description of the weights)."""
  if _WORKDIR.value:
    from xlsr_jax.downstream import data as data_lib
    from xlsr_jax.downstream.translation import task as translation
    from xlsr_jax.checkpoints import translation_files
    from data_pipelines.synthetic_speech import corpus_builder
    import tensorflow_datasets as tfds
    params, cfg, tok, _ = translation_files.load_model(os.path.join(_WORKDIR.value, "model"))
    if _CORPUS.value.partition("/")[0] == "synthetic_speech":
      builder = corpus_builder(_CORPUS.value, _DATA_DIR.value)
    else:
      builder = tfds.builder(_CORPUS.value, data_dir=_DATA_DIR.value)
    names = [f"test_{lang}" for lang in _LANGUAGES.value]
    batch = next(iter(data_lib.eval_batches(builder, names, translation.TranslationLabeler(tok, 96),
                                            batch_size=_BATCH.value, max_samples=100_000)))
    what = (f"trained model {_WORKDIR.value}/model, the first {_BATCH.value} utterances of "
            f"{_CORPUS.value} {','.join(names)}")
    trained = os.path.join(_WORKDIR.value, "config.json")
    if os.path.exists(trained):
      with open(trained) as f:
        c = json.load(f)
      scores = {}
      if os.path.exists(os.path.join(_WORKDIR.value, "metrics.json")):
        with open(os.path.join(_WORKDIR.value, "metrics.json")) as f:
          scores = json.load(f)
      what += (f" (trained {c['finetune']['num_steps']} steps from init={c['init']}, encoder "
               f"{c['model'].get('preset')}, decoder {c['translation'].get('decoder_preset')}; "
               f"test BLEU {scores.get('bleu', float('nan')):.2f})")
    return cfg, params, batch["waveform"], batch["padding_mask"], what
  d = _WIDTH.value
  cfg = translation_preset(_ENCODER.value, "tiny", decoder=dict(
      vocab_size=_VOCAB.value, d_model=d, decoder_layers=_LAYERS.value,
      decoder_attention_heads=max(d // 64, 1), decoder_ffn_dim=4 * d,
      max_position_embeddings=_MAX_LENGTH.value + 2))
  wave = jax.random.normal(jax.random.key(1), (_BATCH.value, int(_SECONDS.value * 16_000)))
  params = jax.jit(SpeechToText(cfg).init)(jax.random.key(0), wave)["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  return cfg, params, wave, None, f"random, {_SECONDS.value} s of noise per utterance"


def _time_alternating(runs: dict, reps: int) -> tuple[dict, dict, dict]:
  """(outputs, compile seconds, timing spread) per mode: each mode's first call (compile) alone,
  then `reps` rounds that time every mode once in turn, so load from other jobs hits all of them."""
  outputs, compile_s, times = {}, {}, {mode: [] for mode in runs}
  for mode, run in runs.items():
    start = time.perf_counter()
    outputs[mode] = np.asarray(jax.block_until_ready(run()))
    compile_s[mode] = time.perf_counter() - start
  for _ in range(reps):
    for mode, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      times[mode].append(time.perf_counter() - start)
  return outputs, compile_s, {mode: spread(t) for mode, t in times.items()}


def main(_):
  start_meta = provenance()  # the machine's load when the run starts
  cfg, params, wave, pad, weights = _model_and_audio()
  states, valid = decoding.encode(cfg, params, wave, pad)
  dec = cfg.decoder
  max_length = min(_MAX_LENGTH.value, dec.max_position_embeddings - 1)
  n = wave.shape[0]
  decoder = (f"decoder {dec.decoder_layers} x {dec.d_model}, vocab {dec.vocab_size}; "
             f"{states.shape[1]} encoder frames; at most {max_length} tokens")
  print(f"{decoder}; batch {n}; weights: {weights}; {jax.devices()[0].platform}; {machine_load()}")
  print("| search | mode | compile s | ms per call (IQR) | utterances/s | tokens (mean) |")
  print("|---|---|---|---|---|---|")
  rows, mismatch = [], []
  for beam in (int(b) for b in _BEAMS.value):
    if beam == 1:
      cached = lambda: decoding.greedy_search(cfg, params, states, valid, max_length=max_length)
      prefix = lambda: greedy_prefix(cfg, params, states, valid, max_length=max_length)
      full = lambda: decoding.greedy_search(cfg, params, states, valid, max_length=max_length,
                                            use_cache=False)
    else:
      cached = lambda: decoding.beam_search(cfg, params, states, valid, max_length=max_length,
                                            beam_width=beam)[0]
      prefix = lambda: beam_prefix(cfg, params, states, valid, max_length=max_length,
                                   beam_width=beam)
      full = lambda: decoding.beam_search(cfg, params, states, valid, max_length=max_length,
                                          beam_width=beam, use_cache=False)[0]
    name = "greedy" if beam == 1 else f"beam {beam}"
    row = {"search": name, "max_length": max_length}
    outputs, compile_s, spreads = _time_alternating(
        {"cache": cached, "recompute_prefix": prefix, "recompute_full": full}, _REPS.value)
    for mode, s in spreads.items():
      row[mode] = dict(compile_s=compile_s[mode], ms=1e3 * s["median"], ms_q1=1e3 * s["q1"],
                       ms_q3=1e3 * s["q3"], utterances_per_s=n / s["median"])
      lengths = generated_lengths(outputs[mode], dec.eos_token_id)
      print(f"| {name} | {mode} | {compile_s[mode]:.1f} | {row[mode]['ms']:.0f} "
            f"({row[mode]['ms_q1']:.0f}-{row[mode]['ms_q3']:.0f}) | "
            f"{row[mode]['utterances_per_s']:.2f} | {lengths.mean():.1f} |", flush=True)
    lengths = generated_lengths(outputs["cache"], dec.eos_token_id)
    row.update(speedup=row["recompute_prefix"]["ms"] / row["cache"]["ms"],
               speedup_vs_full=row["recompute_full"]["ms"] / row["cache"]["ms"],
               mean_tokens=float(lengths.mean()), ended=int((lengths < max_length).sum()),
               same_tokens=bool(np.array_equal(outputs["cache"], outputs["recompute_prefix"])
                                and np.array_equal(outputs["cache"], outputs["recompute_full"])))
    if not row["same_tokens"]:
      mismatch.append(name)
    rows.append(row)
  for r in rows:
    print(f"{r['search']}: cache {r['speedup']:.2f}x faster than recomputing the prefix; "
          f"{r['mean_tokens']:.1f} tokens per utterance on average, {r['ended']} of {n} ended "
          f"before {max_length}")
  if _OUT.value:
    path = write_results(_OUT.value, {
        "setup": {"decoder": decoder, "batch": n, "weights": weights},
        "rows": rows}, meta=start_meta, notes="Replaces decoding_cpu.txt, whose baseline recomputed the whole "
        "max-length sequence at every step with the end token disabled.")
    print(f"wrote {path}")
  if mismatch:
    raise SystemExit(f"{', '.join(mismatch)}: cached and prefix-recomputing decoding returned "
                     "different tokens")
  print("cached and prefix-recomputing decoding returned the same tokens")


if __name__ == "__main__":
  app.run(main)
