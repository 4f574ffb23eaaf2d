"""The ML-SUPERB-style task: labelled budget, text cleaning, LID-token scoring, model shapes, CLI."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlsr_jax.downstream import data as data_lib
from xlsr_jax.downstream import ml_superb
from xlsr_jax.models.config import get_preset


def _index(lengths_by_language):
  ids, langs, samples = [], [], []
  for lang, lengths in lengths_by_language.items():
    for i, seconds in enumerate(lengths):
      ids.append(f"{lang}_{i}")
      langs.append(lang)
      samples.append(int(seconds * 16_000))
  n = len(ids)
  return data_lib.SplitIndex(ids, langs, [""] * n, ["x"] * n, samples)


def test_budget_takes_each_language_up_to_its_minutes_and_skips_long_utterances():
  index = _index({"en": [30.0] * 40 + [25.0], "sw": [10.0, 12.0], "fr": [21.0, 4.0]})
  ids, seconds = ml_superb.budget_subset(index, 600.0, seed=0, max_seconds=20.0)
  # Every English utterance is over 20 s: English gets nothing; fr's 21 s one is skipped.
  assert seconds["en"] == 0.0 and not any(i.startswith("en") for i in ids)
  assert seconds["sw"] == pytest.approx(22.0) and seconds["fr"] == pytest.approx(4.0)
  index = _index({"en": [5.0] * 300, "sw": [3.0] * 10})
  ids, seconds = ml_superb.budget_subset(index, 600.0, seed=1)
  assert seconds["en"] == pytest.approx(600.0) and sum(i.startswith("en") for i in ids) == 120
  assert seconds["sw"] == pytest.approx(30.0)
  again, _ = ml_superb.budget_subset(index, 600.0, seed=1)
  other, _ = ml_superb.budget_subset(index, 600.0, seed=2)
  assert again == ids and other != ids  # the seed fixes which utterances form the budget


def test_text_cleaning_and_lid_scoring():
  assert ml_superb.process_text("Hello, [noise] world!") == "Hello  world"
  tokens = ml_superb.language_tokens(["fr", "en"])
  vocab = ml_superb.build_lid_vocabulary(["ab c", "d"], tokens)
  assert tokens["en"] in vocab.tokens and tokens["fr"] in vocab.tokens
  hyps = [tokens["en"] + "ab c", tokens["fr"] + "d", "d", tokens["en"] + "abd"]
  out = ml_superb.score(hyps, ["AB, C.", "d", "d", "abc"], ["en", "fr", "fr", "en"], vocab, tokens)
  assert out["lid_accuracy"] == pytest.approx(3 / 4) and out["lid_no_language_token"] == 1
  assert out["per_language"]["fr"]["cer"] == 0.0
  # en: "ab c" exact, "abd" for "abc" one substitution, over 4 + 3 reference characters.
  assert out["per_language"]["en"]["cer"] == pytest.approx(1 / 7)
  assert out["macro_cer"] == pytest.approx(1 / 14)
  assert out["worst_language"] == "en" and out["worst_language_cer"] == pytest.approx(1 / 7)


@pytest.mark.parametrize("subsampling", ["conv2d2", "none"])
def test_model_shapes_frozen_encoder_and_subsampled_lengths(subsampling):
  cfg = get_preset("tiny")
  model = ml_superb.Wav2Vec2ForMLSuperb(cfg, 12, hidden_size=32, num_heads=4, ffn_size=64,
                                        subsampling=subsampling)
  wave = jax.random.normal(jax.random.key(0), (2, 16_000))
  padding = jnp.arange(16_000)[None, :] >= jnp.array([[16_000], [8_000]])
  params = nn.meta.unbox(model.init(jax.random.key(1), wave, padding)["params"])
  out = model.apply({"params": params}, wave, padding)
  frames = 49  # 1 s at 16 kHz
  expect = frames if subsampling == "none" else (frames - 1) // 2 - 2
  assert out["logits"].shape == (2, expect, 12)
  lengths = np.asarray(out["frame_valid"].sum(-1))
  half = 24  # 0.5 s -> 24 frames
  assert lengths[0] == expect
  assert lengths[1] == (half if subsampling == "none" else (half - 1) // 2 - 2)
  if subsampling == "conv2d2":
    return
  grads = jax.grad(lambda p: model.apply({"params": p}, wave, padding)["logits"].sum())(params)
  enc = jax.tree.leaves(grads["wav2vec2"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in enc)  # the encoder is frozen
  assert float(jnp.abs(grads["layer_weights"]["layer_weights"]).max()) > 0.0


@pytest.fixture(scope="module")
def tiny_corpus(synthetic_tiny_dir):
  return synthetic_tiny_dir


@pytest.mark.slow
def test_ml_superb_cli_reports_cer_per_language_macro_worst_and_lid(tiny_corpus, tmp_path, capsys):
  from xlsr_jax import evaluate
  workdir = tmp_path / "mls"
  args = ["--config=experiments/downstream/ml_superb.py", "--config.init=random",
          f"--workdir={workdir}", f"--config.data.data_dir={tiny_corpus}",
          "--config.data.corpus=synthetic_speech/tiny", "--config.finetune.num_steps=4",
          "--config.train.log_every=2", "--config.data.batch_size=8",
          "--config.data.eval_batch_size=8", "--config.ml_superb.budget_minutes=0.25",
          "--config.ml_superb.hidden_size=32", "--config.ml_superb.num_heads=4",
          "--config.ml_superb.ffn_size=64"]
  assert evaluate.main(args) == 0
  out = capsys.readouterr().out
  assert "budget 0.25 min per language" in out and "ml_superb test:" in out
  result = json.loads((workdir / "metrics.json").read_text())
  assert set(result["per_language"]) == {"cmn", "en", "ru"}
  for key in ("cer", "macro_cer", "worst_language_cer", "lid_accuracy"):
    assert key in result
  assert result["worst_language_cer"] == max(m["cer"] for m in result["per_language"].values())
  # 15 s per language, or one utterance (<= 6.5 s) past it when the first one alone is longer.
  assert all(0 < s <= 15.0 for s in result["budget_seconds"].values())
  assert (workdir / "model" / "vocab.json").exists()
  assert evaluate.main(args[:1] + ["--config.finetune.mode=finetune"]) == 2
  assert "finetune.mode must be 'probe'" in capsys.readouterr().err
