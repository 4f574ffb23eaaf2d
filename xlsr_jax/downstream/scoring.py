"""What a downstream run hands back: the test split run through the eval step and scored, the
fine-tuned model export, and the report (report.md + plots, metrics.json); what differs between
tasks (the metrics, the export's files, the report's own sections) is the task object's."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np


def export_model(export_dir: str, task, state, model, config: ml_collections.ConfigDict,
                 label_info) -> str:
  """The fine-tuned model in `export_dir`, as `task` (a tasks.Task) exports it (model_files
  layout; vocab.json for the CTC tasks)."""
  from xlsr_jax.models.params import unbox
  params = jax.tree.map(np.asarray, unbox(jax.device_get(state.params)))
  task.export(export_dir, params, model, config, label_info)
  return export_dir


def write_report(workdir: str, task, results: dict, curves: dict, report_kwargs: dict,
                 config: ml_collections.ConfigDict) -> str | None:
  """workdir/report (report.md + plots, with `task`'s own sections), workdir/metrics.json and the
  test line; the report's path (None when the plotting libraries are missing). Process 0 writes;
  the others return None."""
  if jax.process_index() != 0:
    return None
  try:
    from xlsr_jax.downstream import reports
    report = reports.write_report(os.path.join(workdir, "report"), config.task,
                                  {k: v for k, v in results.items() if k != "examples"},
                                  curves=curves or None, **report_kwargs)
    sections = task.report_sections(results, config)
    if sections:
      with open(report, "a", encoding="utf-8") as fh:
        fh.write(sections)
  except ImportError as e:  # pragma: no cover
    logging.warning("no report written: %s", e)
    report = None
  with open(os.path.join(workdir, "metrics.json"), "w") as fh:
    json.dump(results, fh, indent=1, default=float)
  print(f"{config.task} test: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()
                                           if isinstance(v, float)), flush=True)
  return report


def evaluate_split(tuner, state, builder, names, index, labeler, label_info, config
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Runs the eval step on every utterance of the split and scores it as the tuner's task does:
  (metrics, keyword arguments for reports.write_report)."""
  from data_pipelines import device_feed
  from xlsr_jax.downstream import data as data_lib
  d = config.data
  longest = max(index.num_samples) if len(index) else d.max_sample_size
  max_samples = d.eval_max_sample_size or int(np.ceil(longest / 8000) * 8000)
  batches = data_lib.eval_batches(builder, names, labeler, batch_size=d.eval_batch_size,
                                  max_samples=max_samples, normalize=d.normalize)
  outputs = []
  start, seen = time.perf_counter(), 0
  fields = tuner.task.eval_fields
  for batch in batches:
    keep = batch["example_valid"]
    feed = {k: batch[k] for k in ("waveform", "padding_mask", "example_valid", *fields)}
    out = jax.device_get(tuner.evaluate(
        state, device_feed.global_batch(device_feed.process_rows(feed), tuner.mesh,
                                        tuner.batch_sharding.spec)))
    outputs.append(({k: np.asarray(v)[keep] for k, v in out.items()},
                    {k: v[keep] for k, v in batch.items()}))
    seen += int(keep.sum())
    print(f"[eval] {seen}/{len(index)} utterances ({time.perf_counter() - start:.0f} s)", flush=True)
  return tuner.task.score(outputs, index, label_info, config, start)
