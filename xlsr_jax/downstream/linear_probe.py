"""The converged linear probe for LID / SID (probe.solver=lbfgs), end to end.

features (train, validation, test; cached in W/features) -> standardise with the training
statistics -> L2 logistic regression for every strength of probe.l2_grid, chosen on validation
-> test metrics beside the majority-class and chance baselines -> report, metrics.json, and the
model (encoder + a `heads.UtteranceClassifier` holding the standardisation and the fitted
classifier) in W/model, whose logits on a waveform equal the probe's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from xlsr_jax.downstream import data as data_lib
from xlsr_jax.downstream import pooled_features as features_lib
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


@dataclasses.dataclass
class ProbeData:
  """Features x [layers + 1, n, P] and labels [n] of the probe's train, validation and test sets."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def probe_data(config: ml_collections.ConfigDict, features_for: Callable[[str, str], tuple]
               ) -> ProbeData:
  """The three sets from `features_for(split, what)` -> (x, labels): probe.validation_split, or
  probe.holdout_fraction of the training split; validation classes absent from training dropped."""
  d, p = config.data, config.probe
  x_train, y_train = features_for(d.train_split, "train")
  if p.validation_split:
    x_val, y_val = features_for(p.validation_split, "validation")
  else:
    fit_pos, val_pos = holdout(y_train, p.holdout_fraction, config.train.seed)
    x_val, y_val = x_train[:, val_pos], y_train[val_pos]
    x_train, y_train = x_train[:, fit_pos], y_train[fit_pos]
  x_test, y_test = features_for(d.eval_split, "test")
  known = y_val >= 0  # validation classes absent from training cannot be chosen for
  x_val, y_val = x_val[:, known], y_val[known]
  if not len(y_val):
    raise ProbeError(f"probe: the validation data ({p.validation_split or 'hold-out'}) has no "
                     f"utterance of a training class; set --config.probe.validation_split")
  return ProbeData(x_train, y_train, x_val, y_val, x_test, y_test)


def fit_probe(config: ml_collections.ConfigDict, data: ProbeData, num_classes: int, layers: str
              ) -> tuple[probes.ProbeFit, list, probes.Standardizer]:
  """The L2 search of probe.l2_grid on standardised features: (fit, search, standardizer)."""
  p = config.probe
  standardizer = probes.Standardizer.fit(data.x_train)
  fit, search = probes.fit_with_l2_search(
      standardizer(data.x_train), data.y_train, standardizer(data.x_val), data.y_val, num_classes,
      l2_grid=list(p.l2_grid), layers=layers, class_weight=p.class_weight,
      select_metric=p.select_metric, max_iter=p.max_iter, tol=p.tol)
  return fit, search, standardizer


def score(fit: probes.ProbeFit, standardizer: probes.Standardizer, data: ProbeData,
          class_names: tuple[str, ...]) -> tuple[dict[str, Any], np.ndarray]:
  """(test metrics, test logits); unseen test classes count as errors in `accuracy`."""
  logits = fit.logits(standardizer(data.x_test))
  preds = logits.argmax(-1)
  seen = data.y_test >= 0
  results = metrics_lib.classification_metrics(data.y_test[seen], preds[seen], class_names)
  results["accuracy"] = float(np.mean(preds == data.y_test))
  results["error_rate"] = 1.0 - results["accuracy"]
  return results, logits


def split_features_fn(config: ml_collections.ConfigDict, builder, compute_names, cache_path,
                      key_parts: dict) -> Callable[[str, str], Any]:
  """features_for(split, what): the split's names resolved (errors naming the split), the padded
  length chosen, and `compute_names(names, max_samples, what)` read from or written to the
  cache file `cache_path(what)` (probe.cache_features) keyed by `key_parts` and the split."""
  d, p = config.data, config.probe

  def features_for(split: str, what: str):
    try:
      names = data_lib.split_names(builder, split, d.languages)
    except ValueError as e:
      hint = (" (set --config.probe.validation_split='' to hold out probe.holdout_fraction of the "
              "training split instead)" if what == "validation" else "")
      raise ProbeError(f"probe {what} split: {e}{hint}") from None
    index = data_lib.index_split(builder, names)
    max_samples = features_lib.split_max_samples(index.num_samples, d.eval_max_sample_size)
    compute = lambda: compute_names(names, max_samples, what)
    if not p.cache_features:
      return compute()
    key = features_lib.fingerprint(
        **key_parts, corpus=d.corpus, data_dir=os.path.abspath(d.data_dir), names=names,
        max_samples=max_samples, normalize=d.normalize)
    return features_lib.cached_pooled_features(cache_path(what), key, compute)

  return features_for


def handmade_baselines(config: ml_collections.ConfigDict, workdir: str, builder,
                       labeler: data_lib.Labeler, class_names: tuple[str, ...]
                       ) -> dict[str, dict[str, Any]]:
  """{"fbank": ..., "mfcc": ...}: test accuracy, balanced accuracy and macro-F1 of the same probe
  on hand-made features (downstream/handmade.py), each with its chosen l2. Cached in W/features."""
  from xlsr_jax.downstream import handmade
  d = config.data
  cache: dict[str, tuple] = {}

  def compute_all(names, max_samples, what):
    return handmade.handmade_features(builder, names, labeler, batch_size=d.eval_batch_size,
                                      max_samples=max_samples, normalize=d.normalize)

  out = {}
  for name in handmade.NAMES:
    def compute_one(names, max_samples, what, name=name):
      if what not in cache:
        cache[what] = compute_all(names, max_samples, what)
      features, labels = cache[what]
      return features[name], labels
    features_for = split_features_fn(
        config, builder, compute_one,
        lambda what, name=name: os.path.join(workdir, "features", f"{name}_{what}.npz"),
        dict(features=name, classes=list(class_names)))
    data = probe_data(config, features_for)
    fit, _, standardizer = fit_probe(config, data, len(class_names), "last")
    results, _ = score(fit, standardizer, data, class_names)
    out[name] = {k: results[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    out[name].update(l2=fit.l2, feature_dim=int(data.x_train.shape[2]))
  return out


def run_probe(config: ml_collections.ConfigDict, workdir: str, builder, params: dict,
              model_config, model, labeler: data_lib.Labeler, class_names: tuple[str, ...],
              test_index: data_lib.SplitIndex) -> dict[str, Any]:
  """Fits and scores the probe; writes W/metrics.json, W/report/, W/model. Returns the metrics."""
  from xlsr_jax.checkpoints import model_files
  from xlsr_jax.downstream import reports
  d, p = config.data, config.probe
  num_classes = len(class_names)
  cache_dir = os.path.join(workdir, "features")

  def encoder_features(names, max_samples, what):
    return features_lib.pooled_features(
        params, model_config, builder, names, labeler, pooling=config.head.pooling,
        batch_size=d.eval_batch_size, max_samples=max_samples, normalize=d.normalize, what=what)

  features_for = split_features_fn(
      config, builder, encoder_features, lambda what: os.path.join(cache_dir, f"{what}.npz"),
      dict(**features_lib.init_stamp(config.init), init_seed=config.init_seed,
           model=config.model.to_dict(), pooling=config.head.pooling, classes=list(class_names)))
  start = time.perf_counter()
  data = probe_data(config, features_for)
  x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
  feature_seconds = time.perf_counter() - start

  start = time.perf_counter()
  fit, search, standardizer = fit_probe(config, data, num_classes, p.layers)
  fit_seconds = time.perf_counter() - start
  print(f"[probe] chose l2={fit.l2:g} ({p.select_metric} on {p.validation_split or 'hold-out'}); "
        f"features {feature_seconds:.0f} s, fits {fit_seconds:.1f} s", flush=True)

  results, _ = score(fit, standardizer, data, class_names)
  results["baselines"] = metrics_lib.baselines(y_train, y_test[y_test >= 0], num_classes)
  if p.handmade_baselines:
    results["baselines"].update(handmade_baselines(config, workdir, builder, labeler, class_names))
  train_preds = fit.logits(standardizer(x_train)).argmax(-1)
  results["train_accuracy"] = float(np.mean(train_preds == y_train))
  results["probe"] = {"solver": "lbfgs", "layers": fit.layers, "pooling": config.head.pooling,
                      "l2": fit.l2, "sklearn_C": 1.0 / (fit.l2 * len(y_train)),
                      "class_weight": p.class_weight, "select_metric": p.select_metric,
                      "iterations": fit.iterations, "converged": fit.converged,
                      "num_train": int(len(y_train)), "num_validation": int(len(data.y_val)),
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
  print(f"{config.task} test: " + metrics_lib.baselines_line(results), flush=True)
  print(f"report: {report}\nmetrics: {os.path.join(workdir, 'metrics.json')}\n"
        f"model: {export_dir}", flush=True)
  return results
