"""What a downstream run hands back: the test split scored (WER/CER, accuracy and F1, BLEU/chrF,
ML-SUPERB), the baselines and run facts beside the scores, the fine-tuned model export, and the
report (report.md + plots, metrics.json)."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from xlsr_jax.downstream.task_setup import TaskData


def add_task_results(results: dict, config: ml_collections.ConfigDict, data: TaskData,
                     label_info, loaded) -> None:
  """The run's facts beside the scores: the prior-only baselines (LID / SID), the init and the
  training utterances without an English target (speech translation)."""
  task = config.task
  if task in ("lid", "sid"):  # the prior-only classifiers beside the probe (majority class, chance)
    from xlsr_jax.downstream import metrics as metrics_lib
    ids = {name: i for i, name in enumerate(label_info)}
    train_ids = np.asarray([ids[x] for x in data.train_index.labels(task)])
    test_ids = np.asarray([ids[x] for x in data.test_index.labels(task) if x in ids])
    results["baselines"] = metrics_lib.baselines(train_ids, test_ids, len(label_info))
  results.update(task=task, init=config.init, init_source=loaded.source,
                 steps=config.finetune.num_steps, mode=config.finetune.mode)
  if task == "ast":  # training utterances left out for want of a single English target
    from xlsr_jax.downstream.translation import task as translation
    results["train_without_target"] = sum(t is None for t in translation.targets(data.train_index))
    results["train_utterances"] = len(data.train_index)


def export_model(export_dir: str, state, model, config: ml_collections.ConfigDict,
                 label_info) -> str:
  """The fine-tuned model in `export_dir` (model_files layout; vocab.json for the CTC tasks)."""
  from xlsr_jax.checkpoints import model_files
  from xlsr_jax.checkpoints.manager import unbox
  task = config.task
  params = jax.tree.map(np.asarray, unbox(jax.device_get(state.params)))
  metadata = {"task": task, "init": config.init}
  if task in ("lid", "sid"):
    metadata["class_names"] = list(label_info)
  if task == "ml_superb":
    metadata["lid_tokens"] = label_info.lid_tokens
  if task == "ast":
    from xlsr_jax.downstream.translation import task as translation
    translation.save_model(export_dir, params, model.config, label_info, metadata)
  else:
    model_files.save_model(export_dir, params, model.config, metadata)
  if task == "asr":
    label_info.save(export_dir)
  if task == "ml_superb":
    label_info.vocab.save(export_dir)
  return export_dir


def write_report(workdir: str, results: dict, curves: dict, report_kwargs: dict,
                 config: ml_collections.ConfigDict) -> str | None:
  """workdir/report (report.md + plots), workdir/metrics.json and the test line; the report's
  path (None when the plotting libraries are missing). Process 0 writes; the others return None."""
  task = config.task
  if jax.process_index() != 0:
    return None
  try:
    from xlsr_jax.downstream import reports
    report = reports.write_report(os.path.join(workdir, "report"), task,
                                  {k: v for k, v in results.items() if k != "examples"},
                                  curves=curves or None, **report_kwargs)
    if task == "ast":
      from xlsr_jax.downstream.translation import task as translation
      with open(report, "a", encoding="utf-8") as fh:
        fh.write(f"\n## Scoring\n\nsacrebleu corpus BLEU `{results['bleu_signature']}`, chrF "
                 f"`{results['chrf_signature']}`; decoding: beam {config.translation.beam_width} "
                 f"(0 = greedy), length penalty {config.translation.length_penalty}.\n"
                 f"\n## Example translations\n\n"
                 f"{translation.examples_markdown(results['examples'])}\n")
  except ImportError as e:  # pragma: no cover
    logging.warning("no report written: %s", e)
    report = None
  with open(os.path.join(workdir, "metrics.json"), "w") as fh:
    json.dump(results, fh, indent=1, default=float)
  print(f"{task} test: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()
                                    if isinstance(v, float)), flush=True)
  return report


def evaluate_split(tuner, state, builder, names, index, labeler, label_info, config
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Scores every utterance of the split: (metrics, keyword arguments for reports.write_report)."""
  from data_pipelines import device_feed
  from xlsr_jax.downstream import ctc
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream import metrics
  d = config.data
  longest = max(index.num_samples) if len(index) else d.max_sample_size
  max_samples = d.eval_max_sample_size or int(np.ceil(longest / 8000) * 8000)
  batches = data_lib.eval_batches(builder, names, labeler, batch_size=d.eval_batch_size,
                                  max_samples=max_samples, normalize=d.normalize)
  outputs = []
  start, seen = time.perf_counter(), 0
  ctc_task = config.task in ("asr", "ml_superb")
  fields = {"ast": ("labels", "label")}.get(
      config.task, ("labels", "label_valid") if ctc_task else ("label",))
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
  if config.task == "ast":
    from xlsr_jax.downstream.translation import task as translation
    tokens = np.concatenate([o["tokens"] for o, _ in outputs])
    results = translation.score(tokens, index, label_info, config.translation.num_examples)
    results["decode_seconds"] = time.perf_counter() - start
    return results, {}
  if ctc_task:
    vocab = label_info.vocab if config.task == "ml_superb" else label_info
    decoder = None
    if config.asr.beam_width > 0:
      decoder = ctc.BeamSearchDecoder(vocab, beam_width=config.asr.beam_width,
                                      kenlm_path=config.asr.kenlm_path or None,
                                      alpha=config.asr.lm_alpha, beta=config.asr.lm_beta)
    hyps = []
    for out, _ in outputs:
      if decoder is None:
        hyps += [vocab.decode(ids) for ids in ctc.greedy_decode(out["logits"], out["frame_valid"])]
      else:
        log_probs = jax.nn.log_softmax(out["logits"], -1)
        hyps += [decoder.decode(np.asarray(lp)[v]) for lp, v in zip(log_probs, out["frame_valid"])]
    if config.task == "ml_superb":
      from xlsr_jax.downstream import ml_superb
      results = ml_superb.score(hyps, index.transcripts, index.languages, vocab,
                                label_info.lid_tokens)
      results["budget_seconds"] = label_info.seconds
      return results, {}
    from xlsr_jax.downstream.vocabulary import normalize_text
    refs = [normalize_text(t, vocab.lowercase) for t in index.transcripts]
    results = metrics.asr_metrics(refs, hyps, index.languages)
    results["examples"] = [{"language": l, "reference": r, "hypothesis": h}
                           for l, r, h in list(zip(index.languages, refs, hyps))[:20]]
    return results, {}
  names = list(label_info)
  logits = np.concatenate([o["logits"] for o, _ in outputs])
  labels = np.concatenate([b["label"] for _, b in outputs])
  preds = logits.argmax(-1)
  seen_mask = labels >= 0
  results = metrics.classification_metrics(labels[seen_mask], preds[seen_mask], names)
  results["accuracy"] = float(np.mean(preds == labels))  # unseen test classes count as errors
  results["error_rate"] = 1.0 - results["accuracy"]
  confusion = np.asarray(results.pop("confusion"))
  embeddings = np.concatenate([o["embedding"] for o, _ in outputs])
  embedding_labels = list(index.languages)  # coloured by language (issue 7), for every task
  return results, dict(confusion=confusion, labels=names, embeddings=embeddings,
                       embedding_labels=embedding_labels)
