"""Downstream tasks are objects: the table in downstream/tasks/__init__.py is the only place a
task's name is looked up, and a new task plugs in there without editing any other file."""
import json
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlsr_jax.config_loading import ConfigError
from xlsr_jax.downstream import tasks
from xlsr_jax.downstream.tasks.base import Task

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xlsr_jax"
TABLE = PACKAGE / "downstream" / "tasks" / "__init__.py"
NAME = "|".join(map(re.escape, tasks.TASKS))
COMPARISON = re.compile(r"\btask\s*(==|!=)|\btask\s+(not\s+)?in\s|"
                        rf"(==|!=|\bin)\s*\(?\s*[\"']({NAME})[\"']")
QUOTED_NAME = re.compile(rf"[\"']({NAME})[\"']")


def _code_lines(path: pathlib.Path):
  for number, line in enumerate(path.read_text().splitlines(), 1):
    code = line.split("#", 1)[0]
    if code.strip():
      yield number, code


def test_no_task_name_is_compared_outside_the_table():
  found = [f"{path.relative_to(PACKAGE)}:{n}: {code.strip()}"
           for path in sorted(PACKAGE.rglob("*.py")) if path != TABLE
           for n, code in _code_lines(path) if COMPARISON.search(code)]
  assert not found, "task-name comparisons (ask the task object instead):\n" + "\n".join(found)


def test_task_names_are_spelled_only_in_the_table_and_the_default_config():
  defaults = PACKAGE / "downstream" / "task_config_defaults.py"
  found = [f"{path.relative_to(PACKAGE)}:{n}: {code.strip()}"
           for path in sorted(PACKAGE.rglob("*.py")) if path not in (TABLE, defaults)
           for n, code in _code_lines(path) if QUOTED_NAME.search(code)]
  assert not found, "\n".join(found)
  assert [c.strip() for _, c in _code_lines(defaults) if QUOTED_NAME.search(c)] == ['c.task = "asr"']


def test_every_task_in_the_table_is_a_task_object():
  assert set(tasks.TASKS) == {"asr", "lid", "sid", "ast", "ml_superb"}
  assert all(isinstance(t, Task) for t in tasks.TASKS.values())


class EnglishOrNot(Task):
  """A task written here and nowhere else: is the utterance English? (2 classes, the utterance
  classification head fine-tuned with the encoder, accuracy)."""

  def check_config(self, config):
    if config.finetune.mode != "finetune":
      raise ConfigError("task=english_or_not needs finetune.mode=finetune")

  def build(self, config, loaded, encoder_config, train_index):
    from xlsr_jax.downstream import heads
    model = heads.Wav2Vec2ForUtteranceClassification(encoder_config, 2, layer_weighting=False)
    return model, {"wav2vec2": loaded.params} if loaded.params else {}, self.labeler, ("no", "en")

  @staticmethod
  def labeler(ex):
    import tensorflow as tf
    return {"label": tf.cast(ex["language"] == "en", tf.int32)}

  def loss(self, out, batch, config):
    per = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["label"])
    weight = batch["example_valid"].astype(jnp.float32)
    return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0), {}

  def eval_step(self, tuner, state, batch):
    return {"logits": tuner.forward(state.params, batch, None, deterministic=True)["logits"]}

  def score(self, outputs, index, label_info, config, eval_start):
    preds = np.concatenate([o["logits"].argmax(-1) for o, _ in outputs])
    labels = np.concatenate([b["label"] for _, b in outputs])
    return {"accuracy": float(np.mean(preds == labels)), "num_utterances": len(index)}, {}

  def export(self, export_dir, params, model, config, label_info):
    from xlsr_jax.checkpoints import model_files
    model_files.save_model(export_dir, params, model.config, {"task": config.task})


def test_a_new_tasks_config_check_runs_from_the_table(monkeypatch, capsys):
  from xlsr_jax import evaluate
  monkeypatch.setitem(tasks.TASKS, "english_or_not", EnglishOrNot())
  args = ["--config=experiments/downstream/lid.py", "--config.task=english_or_not"]
  assert evaluate.main(args) == 2  # lid.py's finetune.mode=probe
  assert "task=english_or_not needs finetune.mode=finetune" in capsys.readouterr().err
  monkeypatch.delitem(tasks.TASKS, "english_or_not")
  assert evaluate.main(args) == 2
  assert "task='english_or_not' is not one of ('asr', " in capsys.readouterr().err


@pytest.mark.slow
def test_a_new_task_defined_in_one_place_runs_end_to_end(monkeypatch, synthetic_tiny_dir,
                                                         tmp_path, capsys):
  from xlsr_jax import evaluate
  from xlsr_jax.checkpoints import model_files
  monkeypatch.setitem(tasks.TASKS, "english_or_not", EnglishOrNot())
  workdir = tmp_path / "w"
  assert evaluate.main([
      "--config=experiments/downstream/lid.py", "--config.task=english_or_not",
      "--config.finetune.mode=finetune", "--config.init=random", f"--workdir={workdir}",
      f"--config.data.data_dir={synthetic_tiny_dir}", "--config.data.corpus=synthetic_speech/tiny",
      "--config.finetune.num_steps=2", "--config.train.log_every=1",
      "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
      "--config.data.max_sample_size=16000"]) == 0
  assert "english_or_not test: accuracy=" in capsys.readouterr().out
  result = json.loads((workdir / "metrics.json").read_text())
  assert 0.0 <= result["accuracy"] <= 1.0
  assert result["task"] == "english_or_not" and result["steps"] == 2  # the run's facts
  _, _, metadata = model_files.load_model(str(workdir / "model"))
  assert metadata == {"task": "english_or_not"}
