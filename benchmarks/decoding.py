"""Translation decoding speed: greedy and beam search with the key/value cache against recomputing
the whole prefix at every step (the same jitted static-shape functions, `use_cache` on / off).

  python -m benchmarks.decoding                          # tiny encoder, 6 x 256 decoder, CPU
  python -m benchmarks.decoding --decoder_layers=12 --d_model=1024 --vocab=250054 --max_length=64

Random weights with the end token's logit pushed down so that every hypothesis runs to
max_length: both modes then do the same number of steps, and the figure is the cost of
max_length tokens per utterance. Encoding (the wav2vec2 encoder + adapter) is done once, outside
the timing. Prints utterances per second (median over --reps, after one compile call) and checks
that both modes return the same tokens.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.common import machine_load, spread
from xlsr_jax.downstream.translation import decoding
from xlsr_jax.models.speech_translation import SpeechToText, translation_preset

_ENCODER = flags.DEFINE_string("encoder", "tiny", "Encoder preset.")
_LAYERS = flags.DEFINE_integer("decoder_layers", 6, "Decoder layers.")
_WIDTH = flags.DEFINE_integer("d_model", 256, "Decoder width.")
_VOCAB = flags.DEFINE_integer("vocab", 1000, "Decoder vocabulary.")
_BATCH = flags.DEFINE_integer("batch", 8, "Utterances per call.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Audio seconds per utterance.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 48, "Generated tokens per utterance.")
_BEAMS = flags.DEFINE_list("beams", ["1", "5"], "Beam widths; 1 = greedy search.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions per mode.")


def main(_):
  d = _WIDTH.value
  cfg = translation_preset(_ENCODER.value, "tiny", decoder=dict(
      vocab_size=_VOCAB.value, d_model=d, decoder_layers=_LAYERS.value,
      decoder_attention_heads=max(d // 64, 1), decoder_ffn_dim=4 * d,
      max_position_embeddings=_MAX_LENGTH.value + 2))
  samples = int(_SECONDS.value * 16_000)
  wave = jax.random.normal(jax.random.key(1), (_BATCH.value, samples))
  params = jax.jit(SpeechToText(cfg).init)(jax.random.key(0), wave)["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  embed = params["decoder"]["embed_tokens"]
  params["decoder"]["embed_tokens"] = embed.at[cfg.decoder.eos_token_id].set(0.0)
  states, valid = decoding.encode(cfg, params, wave, None)
  print(f"decoder {cfg.decoder.decoder_layers} x {d}, vocab {cfg.decoder.vocab_size}; encoder "
        f"{_ENCODER.value}; batch {_BATCH.value} x {_SECONDS.value} s -> {states.shape[1]} frames; "
        f"{_MAX_LENGTH.value} tokens; {jax.devices()[0].platform}; {machine_load()}")
  print("| search | mode | compile s | ms per call (IQR) | utterances/s | cache speed-up |")
  print("|---|---|---|---|---|---|")
  for beam in (int(b) for b in _BEAMS.value):
    results, outputs = {}, {}
    for use_cache in (True, False):
      if beam == 1:
        run = lambda: decoding.greedy_search(cfg, params, states, valid,
                                             max_length=_MAX_LENGTH.value, use_cache=use_cache)
      else:
        run = lambda: decoding.beam_search(cfg, params, states, valid, max_length=_MAX_LENGTH.value,
                                           beam_width=beam, use_cache=use_cache)[0]
      start = time.perf_counter()
      outputs[use_cache] = np.asarray(jax.block_until_ready(run()))
      compile_s = time.perf_counter() - start
      times = []
      for _ in range(_REPS.value):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
      results[use_cache] = (compile_s, spread(times))
    same = np.array_equal(outputs[True], outputs[False])
    for use_cache in (True, False):
      compile_s, s = results[use_cache]
      speedup = results[False][1]["median"] / results[True][1]["median"]
      name = "greedy" if beam == 1 else f"beam {beam}"
      print(f"| {name} | {'cache' if use_cache else 'recompute'} | {compile_s:.1f} | "
            f"{1e3 * s['median']:.0f} ({1e3 * s['q1']:.0f}-{1e3 * s['q3']:.0f}) | "
            f"{_BATCH.value / s['median']:.1f} | {f'{speedup:.2f}x' if use_cache else ''} |")
    if not same:
      raise SystemExit(f"beam {beam}: cached and recomputed decoding returned different tokens")
  print("cached and recomputed decoding returned the same tokens")


if __name__ == "__main__":
  app.run(main)
