"""The converged linear probe for LID / SID (probe.solver=lbfgs), end to end.

features (train, validation, test; cached in W/features) -> standardise with the training
statistics -> L2 logistic regression for every strength of probe.l2_grid, chosen on validation
-> test metrics beside the majority-class and chance baselines -> report, metrics.json, and the
model (encoder + a `heads.UtteranceClassifier` holding the standardisation and the fitted
classifier) in W/model, whose logits on a waveform equal the probe's.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from xlsr_jax.downstream import data as data_lib
from xlsr_jax.downstream import features as features_lib
from xlsr_jax.downstream import metrics as metrics_lib
from xlsr_jax.downstream import probes


class ProbeError(ValueError):
  """Data the probe cannot be fitted on (no validation split, no known class in it)."""


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train positions, validation positions): `fraction` of each class (at least one utterance
  of every class with two or more) held out, chosen by a seeded permutation."""
  rng = np.random.default_rng(seed)
  val = []
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    take = int(round(fraction * len(where)))
    take = min(max(take, 1 if len(where) > 1 else 0), len(where) - 1)
    val += list(rng.permutation(where)[:take])
  val = np.sort(np.asarray(val, np.int64))
  return np.setdiff1d(np.arange(len(labels)), val), val


def run_probe(config: ml_collections.ConfigDict, workdir: str, builder, params: dict,
              model_config, model, labeler: data_lib.Labeler, class_names: tuple[str, ...],
              test_index: data_lib.SplitIndex) -> dict[str, Any]:
  """Fits and scores the probe; writes W/metrics.json, W/report/, W/model. Returns the metrics."""
  from xlsr_jax.checkpoints import model_files
  from xlsr_jax.downstream import reports
  d, p = config.data, config.probe
  num_classes = len(class_names)
  cache_dir = os.path.join(workdir, "features")

  def split_features(split: str, what: str):
    try:
      names = data_lib.split_names(builder, split, d.languages)
    except ValueError as e:
      hint = (" (set --config.probe.validation_split='' to hold out probe.holdout_fraction of the "
              "training split instead)" if what == "validation" else "")
      raise ProbeError(f"probe {what} split: {e}{hint}") from None
    index = data_lib.index_split(builder, names)
    max_samples = features_lib.split_max_samples(index.num_samples, d.eval_max_sample_size)
    compute = lambda: features_lib.pooled_features(
        params, model_config, builder, names, labeler, pooling=config.head.pooling,
        batch_size=d.eval_batch_size, max_samples=max_samples, normalize=d.normalize, what=what)
    if not p.cache_features:
      return compute()
    key = features_lib.fingerprint(
        **features_lib.init_stamp(config.init), init_seed=config.init_seed,
        model=config.model.to_dict(), corpus=d.corpus, data_dir=os.path.abspath(d.data_dir),
        names=names, pooling=config.head.pooling, max_samples=max_samples,
        normalize=d.normalize, classes=list(class_names))
    return features_lib.cached_pooled_features(os.path.join(cache_dir, f"{what}.npz"), key, compute)

  start = time.perf_counter()
  x_train, y_train = split_features(d.train_split, "train")
  if p.validation_split:
    x_val, y_val = split_features(p.validation_split, "validation")
  else:
    fit_pos, val_pos = holdout(y_train, p.holdout_fraction, config.train.seed)
    x_val, y_val = x_train[:, val_pos], y_train[val_pos]
    x_train, y_train = x_train[:, fit_pos], y_train[fit_pos]
  x_test, y_test = split_features(d.eval_split, "test")
  known = y_val >= 0  # validation classes absent from training cannot be chosen for
  x_val, y_val = x_val[:, known], y_val[known]
  if not len(y_val):
    raise ProbeError(f"probe: the validation data ({p.validation_split or 'hold-out'}) has no "
                     f"utterance of a training class; set --config.probe.validation_split")
  feature_seconds = time.perf_counter() - start

  standardizer = probes.Standardizer.fit(x_train)
  start = time.perf_counter()
  fit, search = probes.fit_with_l2_search(
      standardizer(x_train), y_train, standardizer(x_val), y_val, num_classes,
      l2_grid=list(p.l2_grid), layers=p.layers, class_weight=p.class_weight,
      select_metric=p.select_metric, max_iter=p.max_iter, tol=p.tol)
  fit_seconds = time.perf_counter() - start
  print(f"[probe] chose l2={fit.l2:g} ({p.select_metric} on {p.validation_split or 'hold-out'}); "
        f"features {feature_seconds:.0f} s, fits {fit_seconds:.1f} s", flush=True)

  logits = fit.logits(standardizer(x_test))
  preds = logits.argmax(-1)
  seen = y_test >= 0
  results = metrics_lib.classification_metrics(y_test[seen], preds[seen], class_names)
  results["accuracy"] = float(np.mean(preds == y_test))  # unseen test classes count as errors
  results["error_rate"] = 1.0 - results["accuracy"]
  results["baselines"] = metrics_lib.baselines(y_train, y_test[seen], num_classes)
  train_preds = fit.logits(standardizer(x_train)).argmax(-1)
  results["train_accuracy"] = float(np.mean(train_preds == y_train))
  results["probe"] = {"solver": "lbfgs", "layers": fit.layers, "pooling": config.head.pooling,
                      "l2": fit.l2, "sklearn_C": 1.0 / (fit.l2 * len(y_train)),
                      "class_weight": p.class_weight, "select_metric": p.select_metric,
                      "iterations": fit.iterations, "converged": fit.converged,
                      "num_train": int(len(y_train)), "num_validation": int(len(y_val)),
                      "feature_dim": int(x_train.shape[0] * x_train.shape[2]
                                         if fit.layers == "concat" else x_train.shape[2]),
                      "l2_search": search}
  if fit.layers == "weighted":
    weights = jax.nn.softmax(fit.params["layer_logits"])
    results["probe"]["layer_weights"] = [float(v) for v in weights]
  confusion = np.asarray(results.pop("confusion"))
  results.update(task=config.task, init=config.init, mode="probe", solver="lbfgs")

  export_dir = os.path.join(workdir, "model")
  tree = {"wav2vec2": params, "head": probes.head_params(fit, standardizer)}
  model_files.save_model(export_dir, jax.tree.map(np.asarray, tree), model.config,
                         {"task": config.task, "init": config.init,
                          "class_names": list(class_names),
                          "head": {"pooling": config.head.pooling, "standardize": True,
                                   "concat_layers": fit.layers == "concat",
                                   "layer_weighting": fit.layers == "weighted"}})
  report = reports.write_report(os.path.join(workdir, "report"), config.task, results,
                                confusion=confusion, labels=list(class_names),
                                embeddings=x_test[-1], embedding_labels=list(test_index.languages))
  with open(os.path.join(workdir, "metrics.json"), "w") as fh:
    json.dump(results, fh, indent=1, default=float)
  b = results["baselines"]
  print(f"{config.task} test: accuracy={results['accuracy']:.4f}, balanced_accuracy="
        f"{results['balanced_accuracy']:.4f}, macro_f1={results['macro_f1']:.4f} (majority class "
        f"{b['majority_class']['accuracy']:.4f} / {b['majority_class']['balanced_accuracy']:.4f} / "
        f"{b['majority_class']['macro_f1']:.4f}; chance {b['chance']['accuracy']:.4f})", flush=True)
  print(f"report: {report}\nmetrics: {os.path.join(workdir, 'metrics.json')}\n"
        f"model: {export_dir}", flush=True)
  return results
