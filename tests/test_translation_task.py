"""The synthetic translation task: English targets, sentencepiece, sacrebleu, and evaluate end to end."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.synthetic_speech import texts
from xlsr_jax.downstream.translation import text
from xlsr_jax.downstream.translation import task as translation
from xlsr_jax.checkpoints import translation_files
from tests.benchmark_import import import_benchmark


def test_english_rendering_recovers_the_generated_english():
  # The generator's random calls depend only on the lexicon sizes (equal for every language), so
  # the same seed in English is the ground truth; dates read "<month> <day>" in English.
  ambiguous = {}
  for lang in texts.LEXICONS:
    for seed in range(60):
      n = int(np.random.default_rng(seed).integers(3, 13))
      source = texts.sentence(texts.LEXICONS[lang], np.random.default_rng([seed, 1]), n)
      truth = texts.sentence(texts.LEXICONS["en"], np.random.default_rng([seed, 1]), n)
      try:
        assert texts.english_rendering(lang, source) == truth, (lang, source)
      except texts.UnparsableTranscript:
        ambiguous[lang] = ambiguous.get(lang, 0) + 1
  assert set(ambiguous) <= {"vi", "cmn", "ja"} and sum(ambiguous.values()) < 0.25 * 3 * 60
  assert texts.english_rendering("de", "drei März Wasser. Montag, heute") == \
      "March three water Monday today"  # joined sentences, punctuation
  with pytest.raises(texts.UnparsableTranscript, match="several readings"):
    texts.english_rendering("cmn", "十一月三")  # November three | ten January three
  with pytest.raises(texts.UnparsableTranscript, match="not a sequence of lexicon tokens"):
    texts.english_rendering("de", "drei Katze")


def test_tokenizer_specials_round_trip_and_limits():
  targets = [texts.sentence(texts.LEXICONS["en"], np.random.default_rng(i), 6) for i in range(300)]
  tok = text.train_tokenizer(targets, 100)
  assert (tok.sp.bos_id(), tok.sp.pad_id(), tok.sp.eos_id(), tok.sp.unk_id()) == (0, 1, 2, 3)
  labels = tok.encode_batch(targets[:3], 40)
  for row, target in zip(labels, targets[:3]):
    n = int((row != -100).sum())
    assert row[n - 1] == text.EOS_ID and np.all(row[n:] == -100)
    assert tok.decode(list(row[:n]) + [5, 6]) == target  # stops at </s>
  with pytest.raises(text.TokenizerError, match="max_target_length=3"):
    tok.encode_batch(targets[:1], 3)


def test_translation_metrics_per_language_and_signature():
  refs = ["March three water today good", "Monday today small book", "book two train school new"]
  perfect = text.translation_metrics(refs, refs, ["de", "de", "fr"])
  assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
  assert set(perfect["per_language"]) == {"de-en", "fr-en"}
  assert "tok:13a" in perfect["bleu_signature"] and "nc:6" in perfect["chrf_signature"]
  worse = text.translation_metrics(["March three water today", "Monday today small book", "pen"],
                                   refs, ["de", "de", "fr"])
  assert worse["per_language"]["fr-en"]["bleu"] == 0.0 and 0 < worse["bleu"] < 100
  assert worse["bleu_average_over_languages"] == pytest.approx(
      np.mean([v["bleu"] for v in worse["per_language"].values()]))


def test_labeler_source_characters_for_the_auxiliary_ctc():
  import tensorflow as tf
  from xlsr_jax.downstream.vocabulary import build_vocabulary
  tok = text.train_tokenizer([texts.sentence(texts.LEXICONS["en"], np.random.default_rng(i), 6)
                              for i in range(300)], 100)
  source = "drei März Wasser"
  vocab = build_vocabulary([source, "vier Montag heute"])
  ds = tf.data.Dataset.from_tensors({"language": "de", "transcript": source})
  label = lambda labeler: next(iter(ds.map(labeler).as_numpy_iterator()))  # as tf.data runs it
  out = label(translation.TranslationLabeler(tok, 16, source_vocabulary=vocab, max_source_length=20))
  valid = out["source_label_valid"]
  assert out["label"] == 0 and valid.sum() == len(source)
  assert vocab.decode(out["source_labels"][valid]) == source.lower()
  assert tok.decode(list(out["labels"])) == "March three water"
  too_long = translation.TranslationLabeler(tok, 16, source_vocabulary=vocab, max_source_length=10)
  assert label(too_long)["label"] == -1  # dropped from training, like a too-long target
  plain = label(translation.TranslationLabeler(tok, 16))  # no CTC: no source arrays
  assert set(plain) == {"labels", "label"}


def test_joint_ctc_attention_loss_against_torch():
  """(1 - w) * label-smoothed CE + w * CTC per source character, CTC equal to torch's ctc_loss;
  the CTC head reads the encoder's frames with their padding; w = 0 is the CE alone."""
  import jax
  import torch
  from xlsr_jax.downstream.tasks.ast import translation_loss
  from xlsr_jax.models.feature_encoder import frame_lengths
  from xlsr_jax.models.speech_translation import (SpeechToText, label_smoothed_cross_entropy,
                                                  translation_preset)
  cfg = translation_preset("tiny", "tiny", ctc_vocab_size=9)
  model = SpeechToText(cfg)
  rng = np.random.default_rng(0)
  wave = jnp.asarray(rng.standard_normal((2, 8000)).astype(np.float32))
  padding = jnp.asarray(np.arange(8000)[None, :] >= np.array([[8000], [5000]]))
  tokens = jnp.asarray(rng.integers(4, 200, (2, 5)))
  params = model.init(jax.random.key(0), wave, padding, tokens)["params"]
  assert "ctc_head" in params and "ctc_head" not in SpeechToText(
      cfg.replace(ctc_vocab_size=0)).init(jax.random.key(0), wave, padding, tokens)["params"]
  out = model.apply({"params": params}, wave, padding, tokens)
  frames = np.asarray(frame_lengths(np.array([8000, 5000]), cfg.encoder))
  assert out["ctc_logits"].shape == (2, int(frames[0]), 9)
  np.testing.assert_array_equal(np.asarray(out["frame_valid"]).sum(-1), frames)
  source = np.array([[3, 4, 5, 4, 0, 0], [6, 7, 8, 0, 0, 0]], np.int32)
  source_valid = source > 0
  batch = {"labels": tokens, "example_valid": jnp.ones(2, bool),
           "source_labels": jnp.asarray(source), "source_label_valid": jnp.asarray(source_valid)}
  joint, extra = translation_loss(out, batch, 0.1, ctc_weight=0.3)
  ce, _ = label_smoothed_cross_entropy(out["logits"], tokens, 0.1)
  log_probs = torch.log_softmax(torch.tensor(np.asarray(out["ctc_logits"])), -1)
  ref_ctc = torch.nn.functional.ctc_loss(
      log_probs.transpose(0, 1), torch.from_numpy(source), torch.tensor(frames),
      torch.from_numpy(source_valid.sum(-1)), blank=0, reduction="sum").item() / source_valid.sum()
  assert float(extra["ctc_loss"]) == pytest.approx(ref_ctc, rel=1e-5)
  assert float(joint) == pytest.approx(0.7 * float(ce) + 0.3 * ref_ctc, rel=1e-5)
  alone, extra = translation_loss(out, batch, 0.1)
  assert float(alone) == pytest.approx(float(ce), rel=1e-6) and "ctc_loss" not in extra


@pytest.fixture(scope="module")
def tiny_corpus(synthetic_tiny_dir):
  return synthetic_tiny_dir


@pytest.mark.slow
def test_evaluate_end_to_end_resume_and_exports(tiny_corpus, tmp_path, capsys):
  import torch
  import transformers
  from xlsr_jax import evaluate
  from xlsr_jax.downstream import encoders
  from xlsr_jax.models.speech_translation import SpeechToText
  workdir = tmp_path / "ast"
  args = ["--config=experiments/downstream/ast.py", "--config.init=random", f"--workdir={workdir}",
          f"--config.data.data_dir={tiny_corpus}", "--config.data.corpus=synthetic_speech/tiny",
          "--config.finetune.num_steps=4", "--config.train.log_every=2",
          "--config.train.checkpoint_every=2", "--config.data.eval_batch_size=8",
          "--config.translation.max_decode_length=12", "--config.translation.beam_width=2",
          "--config.translation.ctc_weight=0.3"]  # trains the auxiliary CTC head; exports drop it
  assert evaluate.main(args) == 0
  out = capsys.readouterr().out
  assert "step 4/4" in out and "ast test: bleu=" in out
  result = json.loads((workdir / "metrics.json").read_text())
  langs = {e["language"] for e in result["examples"]}
  assert "en" not in langs and set(result["per_language"]) == {f"{l}-en" for l in langs}
  assert result["num_utterances"] + result["excluded_without_target"] == 8
  assert "tok:13a" in result["bleu_signature"]
  report = (workdir / "report" / "report.md").read_text()
  assert "## Example translations" in report and result["examples"][0]["reference"] in report
  assert evaluate.main(args) == 0  # resumes, nothing left to train, scores again
  assert "resumed from step 4" in capsys.readouterr().out

  # Our export loads back; its encoder is readable as an encoder init; the HF copy loads in
  # transformers and gives our logits.
  params, cfg, tok, _ = translation_files.load_model(str(workdir / "model"))
  assert cfg.decoder.vocab_size == tok.vocab_size
  assert cfg.ctc_vocab_size == 0 and "ctc_head" not in params
  assert encoders.load_encoder(str(workdir / "model")).config == cfg.encoder
  ref = transformers.SpeechEncoderDecoderModel.from_pretrained(str(workdir / "model" / "hf")).eval()
  wave = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32)
  tokens = np.array([[2, 5, 6, 7], [2, 8, 9, 1]])
  with torch.no_grad():
    theirs = ref(input_values=torch.from_numpy(wave), decoder_input_ids=torch.from_numpy(tokens)).logits
  ours = SpeechToText(cfg).apply({"params": params}, jnp.asarray(wave), None, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours["logits"]), theirs.numpy(), rtol=1e-4, atol=1e-4)

  # The audio-use benchmark reads the export: teacher-forced NLLs and accuracies on the test split.
  audio_use = import_benchmark("translation_audio_use").audio_use
  from data_pipelines.synthetic_speech import SyntheticSpeech
  use = audio_use(str(workdir), SyntheticSpeech(config="tiny", data_dir=str(tiny_corpus)),
                  ["test_ru"], 16000 * 12)
  assert use["pieces"] > 0 and all(0 < use[k] < 20 for k in ("nll_own", "nll_other", "nll_silence"))
  assert 0 <= use["first_accuracy"] <= 1 and 0 <= use["later_accuracy"] <= 1
