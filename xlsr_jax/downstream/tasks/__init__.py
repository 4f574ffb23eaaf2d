"""The downstream tasks: config.task -> the object that owns the task (`base.Task`).

This table is the one place a task's name is looked up. A new task is a module here with a
`Task` subclass and a row below (its config keys, if it has new ones, in `downstream/task_config_defaults.py`
and an experiments/downstream/<task>.py).
"""
from __future__ import annotations

import ml_collections

from xlsr_jax.config_loading import ConfigError
from xlsr_jax.downstream.tasks.asr import AsrTask
from xlsr_jax.downstream.tasks.ast import TranslationTask
from xlsr_jax.downstream.tasks.base import Task
from xlsr_jax.downstream.tasks.classification import ClassificationTask
from xlsr_jax.downstream.tasks.multilingual_asr import MlSuperbTask

TASKS: dict[str, Task] = {
    "asr": AsrTask(),  # CTC fine-tuning, WER / CER
    "lid": ClassificationTask(field="language"),  # language id: accuracy, F1, baselines
    "sid": ClassificationTask(field="speaker"),  # speaker id
    "ast": TranslationTask(),  # X -> En speech translation, BLEU / chrF
    "ml_superb": MlSuperbTask(),  # frozen encoder, CTC ASR + LID on a labelled budget
}


def task_for(config: ml_collections.ConfigDict) -> Task:
  """The object of config.task; ConfigError naming the tasks there are."""
  if config.task not in TASKS:
    raise ConfigError(f"task={config.task!r} is not one of {tuple(TASKS)}")
  return TASKS[config.task]
