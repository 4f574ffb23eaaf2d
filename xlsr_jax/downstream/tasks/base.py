"""What a downstream task is: one object owning everything that differs between tasks.

Its config checks, how the data is labelled, the model it trains and what it loads into it, its
loss and eval step, how the test split is scored, what is exported and reported. `tasks.TASKS`
maps config.task to one; the run (`downstream.evaluation_run`, `task_setup`, `scoring`) and the
fine-tuner (`downstream.finetune`) call these methods and never compare task names.

`label_info` is what the task's `build` fixed from the training split (a vocabulary, class names,
a tokenizer, ...): only the task itself reads it. Batches and model outputs are dicts of arrays
(`downstream.data` for the input fields).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections

from xlsr_jax.downstream.task_setup import TaskData, TaskError

Config = ml_collections.ConfigDict


class Task:
  """The defaults; each task module subclasses this and overrides what its task does."""

  drop_longer: bool = False  # train on whole utterances only (a label that a crop would cut)
  eval_fields: tuple[str, ...] = ("label",)  # batch fields the eval step needs beside the audio

  # -- config and data --------------------------------------------------------------------------
  def check_config(self, config: Config) -> None:
    """ConfigError for a setting this task cannot run with (after the config is loaded)."""

  def split_names(self, config: Config, names: list[str], split: str) -> list[str]:
    """The per-language split names (`names` of `split`) the task reads."""
    del config, split
    return names

  def build(self, config: Config, loaded, encoder_config, train_index
            ) -> tuple[Any, dict, Any, Any]:
    """(model, loaded parts, labeler, label_info) from the init (`loaded`: encoders.LoadedEncoder),
    the encoder config to build with and the training split's index; loaded parts is a partial
    params tree ({"wav2vec2": ..., a reused head}) that replaces the fresh initialisation."""
    raise NotImplementedError

  def check_data(self, config: Config, data: TaskData, label_info, labeler) -> None:
    """TaskError for data the task cannot train on (checked before anything is trained)."""

  def keep_ids(self, label_info) -> Sequence[str] | None:
    """The training utterances to read (None: all of them)."""
    del label_info
    return None

  def run_line(self, config: Config) -> str:
    """What the start-up line adds after "mode=..."."""
    del config
    return ""

  # -- a head fitted without the step loop ------------------------------------------------------
  def fits_without_steps(self, config: Config) -> bool:
    """True when `fit_without_steps` replaces fine-tuning (the L-BFGS linear probe)."""
    del config
    return False

  def fit_without_steps(self, config: Config, workdir: str, data: TaskData, loaded, model,
                        labeler, label_info) -> dict[str, Any]:
    """Fits, scores, exports and reports in one go; returns the metrics."""
    raise NotImplementedError

  # -- training and the eval step (traced inside jit) -------------------------------------------
  def forward_inputs(self, model, batch: dict) -> dict[str, jax.Array]:
    """Keyword arguments of the model's forward beyond the audio (teacher-forced inputs)."""
    del model, batch
    return {}

  def loss(self, out: dict, batch: dict, config: Config) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean loss over the batch's real examples, extra metrics) of the model outputs `out`."""
    raise NotImplementedError

  def eval_step(self, tuner, state, batch: dict) -> dict[str, jax.Array]:
    """What scoring needs of one eval batch; `tuner` (finetune.Finetuner) gives the forward."""
    raise NotImplementedError

  # -- results ----------------------------------------------------------------------------------
  def score(self, outputs: list[tuple[dict, dict]], index, label_info, config: Config,
            eval_start: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, keyword arguments for reports.write_report) of the test split: `outputs` holds
    (eval step outputs, batch) per batch, real rows only, in `index` order; `eval_start` is
    time.perf_counter() when the eval loop began."""
    raise NotImplementedError

  def add_results(self, results: dict, config: Config, data: TaskData, label_info, labeler,
                  loaded, workdir: str) -> None:
    """The run's facts beside the scores (tasks add theirs before or after these)."""
    del data, label_info, labeler, workdir
    results.update(task=config.task, init=config.init, init_source=loaded.source,
                   steps=config.finetune.num_steps, mode=config.finetune.mode)

  def export(self, export_dir: str, params: dict, model, config: Config, label_info) -> None:
    """The fine-tuned model (unboxed numpy params) in `export_dir`."""
    raise NotImplementedError

  def report_sections(self, results: dict, config: Config) -> str:
    """Markdown appended to report.md ("" for none)."""
    del results, config
    return ""


def export_metadata(config: Config, **extra) -> dict[str, Any]:
  """model_config.json metadata of an export: the task and the init, and the task's `extra`."""
  return {"task": config.task, "init": config.init, **extra}


def check_some_fit(config: Config, train_index) -> None:
  """TaskError when no training utterance is within data.max_sample_size (a task that drops the
  longer ones would have nothing to train on)."""
  limit = config.data.max_sample_size
  if not any(n <= limit for n in train_index.num_samples):
    raise TaskError(f"no training utterance is within data.max_sample_size={limit} "
                    f"samples (the shortest has {min(train_index.num_samples, default=0)}); "
                    f"{config.task} drops longer ones: raise data.max_sample_size")
