"""How much a speech-translation model's decoder uses the audio: teacher-forced test NLL per target
piece with each utterance's own audio, with another utterance's (rolled by one in the batch) and
with silence, and the teacher-forced accuracy of the first piece against the later ones.

  python -m benchmarks.translation_audio_use --workdir=W --data_dir=D [--corpus=synthetic_speech/translation] [--languages=de,fr]

W is a `python -m xlsr_jax.evaluate --config=experiments/downstream/ast*.py` workdir (its
W/model export is read). Equal NLL with own and other audio means the decoder ignores the audio
(the language-model plateau); a first-piece accuracy far above the later pieces' means it finds
the start of the utterance but does not follow the audio after it.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import machine_load

_WORKDIR = flags.DEFINE_string("workdir", None, "An ast evaluate workdir.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir of the corpus.", required=True)
_CORPUS = flags.DEFINE_string("corpus", "synthetic_speech/translation", "Corpus (name/config).")
_LANGUAGES = flags.DEFINE_list("languages", ["de", "fr"], "Test languages.")
_SPLIT = flags.DEFINE_string("split", "test", "Split.")
_MAX_SAMPLES = flags.DEFINE_integer("max_samples", 100_000, "Padded length of the batches.")


def audio_use(workdir: str, builder, names: list[str], max_samples: int) -> dict[str, float]:
  """{"nll_own", "nll_other", "nll_silence", "first_accuracy", "later_accuracy", "pieces"} of the
  export in workdir/model on the splits `names` of `builder` (teacher forcing, batches of 16)."""
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream.translation import task as translation
  from xlsr_jax.checkpoints import translation_files
  from xlsr_jax.models.speech_translation import SpeechToText, shift_tokens_right
  params, cfg, tok, _ = translation_files.load_model(os.path.join(workdir, "model"))
  model = SpeechToText(cfg)
  logits_fn = jax.jit(lambda params, w, p, d: model.apply({"params": params}, w, p, d)["logits"])
  sums = {k: 0.0 for k in ("own", "other", "silence")}
  pieces, first, later = 0, [0, 0], [0, 0]
  for b in data_lib.eval_batches(builder, names, translation.TranslationLabeler(tok, 96),
                                 batch_size=16, max_samples=max_samples, normalize=True):
    keep = b["example_valid"] & (b["label"] >= 0)
    labels = np.where(keep[:, None], b["labels"], -100)
    valid = labels != -100
    decoder_in = shift_tokens_right(jnp.asarray(labels), cfg.decoder.pad_token_id,
                                    cfg.decoder.decoder_start_token_id)
    audio = {"own": (b["waveform"], b["padding_mask"]),
             "other": (np.roll(b["waveform"], 1, 0), np.roll(b["padding_mask"], 1, 0)),
             "silence": (np.zeros_like(b["waveform"]), b["padding_mask"])}
    for key, (wave, pad) in audio.items():
      log_probs = np.asarray(jax.nn.log_softmax(logits_fn(params, wave, pad, decoder_in), -1))
      picked = np.take_along_axis(log_probs, np.maximum(labels, 0)[..., None], -1)[..., 0]
      sums[key] -= float(picked[valid].sum())
      if key == "own":
        right = (log_probs.argmax(-1) == labels) & valid
        first[0] += int(right[:, 0].sum()); first[1] += int(valid[:, 0].sum())
        later[0] += int(right[:, 1:].sum()); later[1] += int(valid[:, 1:].sum())
    pieces += int(valid.sum())
  n = max(pieces, 1)
  return {"nll_own": sums["own"] / n, "nll_other": sums["other"] / n,
          "nll_silence": sums["silence"] / n, "first_accuracy": first[0] / max(first[1], 1),
          "later_accuracy": later[0] / max(later[1], 1), "pieces": pieces}


def main(argv) -> None:
  del argv
  import tensorflow_datasets as tfds
  if _CORPUS.value.partition("/")[0] == "synthetic_speech":
    from data_pipelines.synthetic_speech import corpus_builder
    builder = corpus_builder(_CORPUS.value, _DATA_DIR.value)
  else:
    builder = tfds.builder(_CORPUS.value, data_dir=_DATA_DIR.value)
  names = [f"{_SPLIT.value}_{lang}" for lang in _LANGUAGES.value]
  r = audio_use(_WORKDIR.value, builder, names, _MAX_SAMPLES.value)
  print(f"# {_WORKDIR.value}: {r['pieces']} target pieces of {','.join(names)}; {machine_load()}")
  print("| NLL own audio | NLL other audio | NLL silence | first-piece acc. | later pieces acc. |")
  print("|---|---|---|---|---|")
  print(f"| {r['nll_own']:.3f} | {r['nll_other']:.3f} | {r['nll_silence']:.3f}"
        f" | {r['first_accuracy']:.3f} | {r['later_accuracy']:.3f} |")


if __name__ == "__main__":
  app.run(main)
