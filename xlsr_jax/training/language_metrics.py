"""Per-language validation: contrastive loss, accuracy and code perplexity of each language alone.

With train.eval_language_batches = n > 0, every evaluation also scores n validation batches of
each language on its own (data.eval_language_sources, default the training and replay sources), so
that continued pretraining shows what it gains on new languages and forgets on old ones. The values
go to TensorBoard (eval_language/<language>/<metric>) and history.json; at the end of the run
`write_report` draws <workdir>/language_metrics.png and writes <workdir>/language_metrics.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from data_pipelines import input_pipeline
from xlsr_jax.training import fit
from xlsr_jax.training import metric_writer as metrics_lib

PREFIX = "eval_language"
METRICS = ("contrastive_loss", "accuracy", "code_perplexity")


def language_pipelines(config: ml_collections.ConfigDict, base: input_pipeline.PipelineConfig
                       ) -> dict[str, input_pipeline.PipelineConfig]:
  """{language: the validation pipeline of that language alone}, from `base` (the eval pipeline).

  Languages are named as in the corpus splits; a language found in two corpora is "corpus:lang".
  """
  d = config.data
  pairs = d.eval_language_sources or list(d.sources) + list(d.replay_sources)
  alone = dict(replay_sources=(), replay_fraction=0.0)
  found = []
  for corpus, langs in pairs:
    group = dataclasses.replace(base, sources=((corpus, None if langs is None else tuple(langs)),),
                                **alone)
    found += [(corpus, s.language) for s in input_pipeline.resolve_sources(group)]
  names = [lang for _, lang in found]
  return {(lang if names.count(lang) == 1 else f"{corpus}:{lang}"):
          dataclasses.replace(base, sources=((corpus, (lang,)),), **alone) for corpus, lang in found}


def evaluate_languages(pipelines: dict[str, input_pipeline.PipelineConfig], num_batches: int,
                       score: Callable[[list], dict[str, float]], cache: dict[str, list],
                       feed: Callable[[dict], dict]) -> dict[str, dict[str, float]]:
  """{language: mean metrics over its num_batches batches}; `score(batches)` evaluates host batches
  (loop.evaluate's mean); `cache` keeps each language's batches across calls (read once)."""
  out = {}
  for language, pipeline in pipelines.items():
    if language not in cache:
      iterator = input_pipeline.make_pretraining_iterator(
          pipeline, process_index=jax.process_index(), process_count=jax.process_count())
      cache[language] = [feed(next(iterator)) for _ in range(num_batches)]
      iterator.close()
    out[language] = score(cache[language])
  return out


def flatten(per_language: dict[str, dict[str, float]]) -> dict[str, float]:
  """{"<language>/<metric>": value} of METRICS, for the metric writer and history.json."""
  return {f"{lang}/{k}": v for lang, m in per_language.items() for k, v in m.items() if k in METRICS}


def console_line(step: int, flat: dict[str, float]) -> str:
  """"eval per language step N: en 3.01 (acc 0.08), ..." from `flatten`'s output."""
  languages = sorted({k.rsplit("/", 1)[0] for k in flat})
  cells = [f"{lang} {flat[f'{lang}/contrastive_loss']:.3f} (acc {flat[f'{lang}/accuracy']:.2f})"
           for lang in languages]
  return f"eval per language step {step} (contrastive loss, accuracy): " + ", ".join(cells)


class LanguageEvaluation(fit.Hook):
  """`fit`'s per-language validation every `every` steps: `evaluate(state)` -> {language: metrics}
  to TensorBoard and the history (eval_language/<language>/<metric>) and one console line; at the
  end `write_report` into `workdir`."""

  def __init__(self, every: int, evaluate: Callable[[Any], dict[str, dict[str, float]]],
               workdir: str):
    self.every, self.evaluate, self.workdir = every, evaluate, workdir

  def on_eval(self, done: int, state: Any, writer: metrics_lib.MetricWriter) -> list[dict]:
    per_language = flatten(self.evaluate(state))
    writer.write(done, per_language, prefix=PREFIX, console=False)
    if jax.process_index() == 0:
      print(console_line(done, per_language), flush=True)
    return [dict(step=done, **{f"{PREFIX}/{k}": v for k, v in per_language.items()})]

  def on_end(self, state: Any, history: list[dict]) -> None:
    if jax.process_index() == 0:
      plot = write_report(self.workdir, history)
      if plot:
        print(f"per-language validation: {plot}", flush=True)


def collect(history: list[dict[str, Any]]) -> dict[str, Any]:
  """{"steps": [...], "languages": {language: {metric: [value per step]}}} from the loop's history."""
  rows = [h for h in history if any(k.startswith(PREFIX + "/") for k in h)]
  languages: dict[str, dict[str, list[float]]] = {}
  for h in rows:
    for key, value in h.items():
      if key.startswith(PREFIX + "/"):
        lang, metric = key[len(PREFIX) + 1:].rsplit("/", 1)
        languages.setdefault(lang, {}).setdefault(metric, []).append(float(value))
  return {"steps": [h["step"] for h in rows], "languages": languages}


def write_report(workdir: str, history: list[dict[str, Any]]) -> str | None:
  """language_metrics.json and .png (bars: the last evaluation; dots: the first) in `workdir`;
  returns the PNG path, or None when no per-language evaluation ran."""
  table = collect(history)
  if not table["steps"]:
    return None
  with open(os.path.join(workdir, "language_metrics.json"), "w") as f:
    json.dump(table, f, indent=1)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  languages = list(table["languages"])
  x = np.arange(len(languages))
  fig, axes = plt.subplots(len(METRICS), 1, figsize=(max(6.0, 0.45 * len(languages)), 8), sharex=True)
  for ax, metric in zip(axes, METRICS):
    last = [table["languages"][lang][metric][-1] for lang in languages]
    first = [table["languages"][lang][metric][0] for lang in languages]
    ax.bar(x, last, color="tab:blue", label=f"step {table['steps'][-1]}")
    if len(table["steps"]) > 1:
      ax.plot(x, first, "k.", label=f"step {table['steps'][0]}")
    values = last + (first if len(table["steps"]) > 1 else [])
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) or 0.05 * abs(high) or 1.0
    ax.set_ylim(low - pad, high + pad)  # the differences between languages, not the offset
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(axis="y", alpha=0.3)
  axes[0].legend(fontsize=8)
  axes[0].set_title(f"validation per language: {os.path.basename(os.path.normpath(workdir))}")
  axes[-1].set_xticks(x, languages, rotation=90)
  fig.tight_layout()
  path = os.path.join(workdir, "language_metrics.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
