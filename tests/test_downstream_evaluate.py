"""The evaluate CLI end to end on the tiny synthetic_speech build, resume, and its named errors."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from xlsr_jax import evaluate
from xlsr_jax.checkpoints import model_files
from xlsr_jax.downstream import encoders
from xlsr_jax.models.config import get_preset


@pytest.fixture(scope="module")
def tiny_corpus(synthetic_tiny_dir):
  return synthetic_tiny_dir


def _args(task, data_dir, workdir, init="random", *extra):
  return [f"--config=experiments/downstream/{task}.py", f"--config.init={init}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.data.corpus=synthetic_speech/tiny", "--config.finetune.num_steps=4",
          "--config.train.log_every=2", "--config.train.checkpoint_every=2",
          "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
          "--config.data.max_sample_size=16000", *extra]


@pytest.mark.slow  # an end-to-end CLI run (~40-60 s); the fast tier keeps to its 8 min
def test_lid_sgd_probe_end_to_end_then_resume_and_wrong_classifier(tiny_corpus, tmp_path, capsys):
  workdir = tmp_path / "lid"
  sgd = "--config.probe.solver=sgd"
  assert evaluate.main(_args("lid", tiny_corpus, workdir, "random", sgd)) == 0
  out = capsys.readouterr().out
  assert "step 4/4" in out and "lid test: accuracy=" in out
  result = json.loads((workdir / "metrics.json").read_text())
  splits = tfds.builder("synthetic_speech/tiny", data_dir=tiny_corpus).info.splits
  num_test = sum(splits[name].num_examples for name in splits if name.startswith("test_"))
  assert result["num_utterances"] == num_test and 0.0 <= result["accuracy"] <= 1.0
  assert result["error_rate"] == pytest.approx(1 - result["accuracy"])
  assert {"balanced_accuracy", "macro_f1", "per_class", "baselines"} <= set(result)
  report = workdir / "report"
  assert (report / "report.md").exists() and (report / "confusion_matrix.png").exists()
  assert any(p.name.startswith("embeddings") for p in report.iterdir())
  assert os.listdir(workdir / "tensorboard")
  # The same command again resumes from the last checkpoint (nothing left to train) and re-scores.
  assert evaluate.main(_args("lid", tiny_corpus, workdir, "random", sgd)) == 0
  assert "resumed from step 4" in capsys.readouterr().out
  # The exported LID model has a 3-language classifier: as init for SID (6 speakers) it stops.
  assert evaluate.main(_args("sid", tiny_corpus, tmp_path / "sid", str(workdir / "model"))) == 2
  err = capsys.readouterr().err
  assert "has 3 classes but task sid" in err and "has 6" in err


@pytest.mark.slow  # an end-to-end CLI run (~40-60 s); the fast tier keeps to its 8 min
def test_lid_lbfgs_probe_default_reports_baselines_and_caches_features(tiny_corpus, tmp_path,
                                                                       capsys):
  workdir = tmp_path / "lid"
  grid = "--config.probe.l2_grid=[1e-3,1e-1]"
  assert evaluate.main(_args("lid", tiny_corpus, workdir, "random", grid)) == 0
  out = capsys.readouterr().out
  assert "solver=lbfgs" in out and "[probe] chose l2=" in out and "majority class" in out
  result = json.loads((workdir / "metrics.json").read_text())
  splits = tfds.builder("synthetic_speech/tiny", data_dir=tiny_corpus).info.splits
  num_test = sum(splits[name].num_examples for name in splits if name.startswith("test_"))
  assert result["num_utterances"] == num_test and result["solver"] == "lbfgs"
  assert result["probe"]["converged"] and result["probe"]["l2"] in (1e-3, 1e-1)
  assert [r["l2"] for r in result["probe"]["l2_search"]] == [1e-1, 1e-3]
  for key in ("accuracy", "balanced_accuracy", "macro_f1"):
    assert 0.0 <= result[key] <= 1.0
    assert key in result["baselines"]["majority_class"] and key in result["baselines"]["chance"]
    assert 0.0 <= result["baselines"]["fbank"][key] <= 1.0  # the hand-made-feature probes
    assert 0.0 <= result["baselines"]["mfcc"][key] <= 1.0
  assert result["baselines"]["chance"]["accuracy"] == pytest.approx(1 / 3)
  report = (workdir / "report" / "report.md").read_text()
  assert "| metric | this model | majority class | chance |" in report and "## Per class" in report
  assert "| metric | this model | FBANK probe | MFCC probe |" in report
  # Again: the cached features are read, the fit is the same.
  assert evaluate.main(_args("lid", tiny_corpus, workdir, "random", grid)) == 0
  assert "[features] read from" in capsys.readouterr().out
  again = json.loads((workdir / "metrics.json").read_text())
  assert again["accuracy"] == result["accuracy"] and again["probe"]["l2"] == result["probe"]["l2"]
  # Its exported model (encoder + standardised concat head) is a 3-class classifier too.
  assert evaluate.main(_args("sid", tiny_corpus, tmp_path / "sid", str(workdir / "model"))) == 2
  assert "has 3 classes but task sid" in capsys.readouterr().err
  sgd = "--config.probe.solver=sgd"
  assert evaluate.main(_args("lid", tiny_corpus, tmp_path / "l2", str(workdir / "model"), sgd)) == 2
  assert "holds an L-BFGS probe head" in capsys.readouterr().err


def test_missing_validation_split_is_named(tiny_corpus, tmp_path, capsys):
  args = _args("lid", tiny_corpus, tmp_path / "lid", "random", "--config.probe.validation_split=dev")
  assert evaluate.main(args) == 2
  err = capsys.readouterr().err
  assert "probe validation split" in err and "--config.probe.validation_split=''" in err


def test_probe_config_errors_are_named(capsys):
  assert evaluate.main(["--config=experiments/downstream/lid.py", "--config.probe.layers=all"]) == 2
  assert "probe.layers='all' is not one of ('concat', 'weighted', 'last')" in capsys.readouterr().err


def test_missing_export_dir_is_named(tiny_corpus, tmp_path, capsys):
  missing = tmp_path / "no_such_export"
  assert evaluate.main(_args("lid", tiny_corpus, tmp_path / "w", str(missing))) == 2
  assert f"init '{missing}' does not exist" in capsys.readouterr().err


def test_vocabulary_that_does_not_match_the_ctc_head_is_named(tiny_corpus, tmp_path, capsys):
  cfg = get_preset("tiny")
  encoder = encoders.random_encoder(cfg)
  head = {"kernel": np.zeros((cfg.hidden_size, 10), np.float32), "bias": np.zeros(10, np.float32)}
  model_files.save_model(str(tmp_path / "asr_export"), {"wav2vec2": encoder, "lm_head": head}, cfg)
  code = evaluate.main(_args("asr", tiny_corpus, tmp_path / "asr", str(tmp_path / "asr_export")))
  err = capsys.readouterr().err
  assert code == 2 and "but the CTC head of" in err and "has 10 outputs" in err


@pytest.mark.parametrize("path", sorted(
    os.path.join("experiments", "downstream", f) for f in os.listdir("experiments/downstream")
    if f.endswith(".py")))
def test_every_downstream_experiment_config_loads_and_validates(path):
  from xlsr_jax.config_loading import load_config_file
  from xlsr_jax.downstream import task_config_defaults, task_config_checks
  from xlsr_jax.downstream.tasks import TASKS
  config = load_config_file(path)
  task_config_checks.validate(config)
  assert config.task in TASKS
  assert set(config.keys()) == set(task_config_defaults.get_default_config().keys())


def test_unbuilt_synthetic_config_names_the_build_command(tmp_path, capsys):
  code = evaluate.main(["--config=experiments/downstream/ast.py", f"--workdir={tmp_path / 'w'}",
                        f"--config.data.data_dir={tmp_path / 'empty'}",
                        "--config.data.corpus=synthetic_speech/translation"])
  err = capsys.readouterr().err
  assert code == 2 and "--config=translation`" in err and "build_if_missing" in err


def test_config_typo_is_named(capsys):
  assert evaluate.main(["--config=experiments/downstream/asr.py", "--config.finetune.mask_probb=0.5"]) == 2
  assert "nearest valid keys: mask_prob" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["asr", "ml_superb"])
def test_transcripts_longer_than_max_label_length_stop_before_training(task, tiny_corpus, tmp_path,
                                                                       capsys):
  workdir = tmp_path / task
  code = evaluate.main(_args(task, tiny_corpus, workdir, "random",
                             "--config.asr.max_label_length=5", "--config.model.preset=tiny",
                             "--config.data.max_sample_size=480000"))
  err = capsys.readouterr().err
  assert code == 2, err[-2000:]
  assert "need more than asr.max_label_length=5 CTC labels" in err
  assert "--config.asr.max_label_length=" in err
  assert not (workdir / "checkpoints").exists()  # stopped at start-up, nothing trained
