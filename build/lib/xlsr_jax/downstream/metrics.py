"""Downstream metrics: WER / CER (Levenshtein), per language and overall; accuracy, balanced
accuracy, macro-F1, per-class scores, the confusion matrix, and the prior-only baselines.

Error rates are corpus-level, as in fairseq and jiwer: total edits (substitutions + deletions +
insertions) over the total number of reference words (WER) or characters (CER). Texts are
compared after whitespace normalisation (runs of spaces collapsed, ends stripped); CER counts
the inner spaces as characters. An empty reference contributes no reference units, so its
hypothesis's characters all count as insertions; an empty hypothesis is all deletions. When
every reference is empty the rate is 0 if every hypothesis is empty too, else infinite.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
  """Levenshtein distance between two sequences (unit costs)."""
  if len(ref) < len(hyp):
    ref, hyp = hyp, ref
  previous = list(range(len(hyp) + 1))
  for i, r in enumerate(ref, 1):
    current = [i]
    for j, h in enumerate(hyp, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
    previous = current
  return previous[-1]


def _words(text: str) -> list[str]:
  return text.split()


def _chars(text: str) -> list[str]:
  return list(" ".join(text.split()))


def error_counts(refs: Sequence[str], hyps: Sequence[str], unit: str) -> tuple[int, int]:
  """(total edits, total reference units) for unit "word" or "char"."""
  if len(refs) != len(hyps):
    raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
  split = {"word": _words, "char": _chars}[unit]
  edits = units = 0
  for ref, hyp in zip(refs, hyps):
    r, h = split(ref), split(hyp)
    edits += edit_distance(r, h)
    units += len(r)
  return edits, units


def _rate(edits: int, units: int) -> float:
  if units == 0:
    return 0.0 if edits == 0 else float("inf")
  return edits / units


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
  return _rate(*error_counts(refs, hyps, "word"))


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
  return _rate(*error_counts(refs, hyps, "char"))


def asr_metrics(refs: Sequence[str], hyps: Sequence[str], languages: Sequence[str]) -> dict:
  """{"wer", "cer", "num_utterances", "per_language": {lang: {"wer", "cer", "num_utterances"}}}."""
  out = {"wer": wer(refs, hyps), "cer": cer(refs, hyps), "num_utterances": len(refs),
         "per_language": {}}
  for lang in sorted(set(languages)):
    idx = [i for i, l in enumerate(languages) if l == lang]
    r, h = [refs[i] for i in idx], [hyps[i] for i in idx]
    out["per_language"][lang] = {"wer": wer(r, h), "cer": cer(r, h), "num_utterances": len(idx)}
  return out


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
  """int64 [num_classes, num_classes]: row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
  return matrix


def per_class_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, dict]:
  """{name: {"precision", "recall", "f1", "support"}} from counts [C (true), C (predicted)].

  A class never predicted has precision 0 (as scikit-learn's zero_division=0); a class absent
  from the labels is left out (its recall is undefined).
  """
  confusion = np.asarray(confusion, np.float64)
  out = {}
  for i, name in enumerate(class_names):
    support, predicted, hit = confusion[i].sum(), confusion[:, i].sum(), confusion[i, i]
    if not support:
      continue
    precision = hit / predicted if predicted else 0.0
    recall = hit / support
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                 "support": int(support)}
  return out


def classification_metrics(labels: Sequence[int], predictions: Sequence[int],
                           class_names: Sequence[str]) -> dict:
  """Accuracy and the class-fair scores of a classifier.

  {"accuracy", "balanced_accuracy" (mean recall over the classes present in `labels`),
  "macro_f1" (mean F1 over the same classes), "error_rate", "num_utterances",
  "per_class_accuracy": {name: recall}, "per_class": {name: {precision, recall, f1, support}}}
  and the confusion matrix under "confusion" (a list of lists, JSON-ready). The balanced and
  macro scores equal scikit-learn's `balanced_accuracy_score` and `f1_score(average="macro",
  labels=<classes present>)`.
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  matrix = confusion_matrix(labels, predictions, len(class_names))
  accuracy = float(np.mean(labels == predictions)) if len(labels) else 0.0
  per_class = per_class_scores(matrix, class_names)
  per_class_accuracy = {name: s["recall"] for name, s in per_class.items()}
  mean = lambda key: float(np.mean([s[key] for s in per_class.values()])) if per_class else 0.0
  return {"accuracy": accuracy, "balanced_accuracy": mean("recall"), "macro_f1": mean("f1"),
          "error_rate": 1.0 - accuracy, "num_utterances": int(len(labels)),
          "per_class_accuracy": per_class_accuracy, "per_class": per_class,
          "confusion": matrix.tolist()}


def baselines(train_labels: Sequence[int], test_labels: Sequence[int], num_classes: int
              ) -> dict[str, dict[str, float]]:
  """What a classifier that ignores the audio scores on `test_labels`.

  "majority_class": always the most frequent class of the training labels (ties: lowest id);
  "chance": a uniformly random guess over the `num_classes` classes (expected values:
  accuracy = balanced accuracy = 1 / C; class c's expected precision is its test share and its
  recall 1 / C, which gives the expected macro-F1 up to the ratio-of-expectations approximation).
  Both scored with `classification_metrics`' definitions over the classes present in the test.
  """
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  majority = int(np.bincount(train_labels, minlength=num_classes).argmax())
  names = [str(i) for i in range(num_classes)]
  m = classification_metrics(test_labels, np.full_like(test_labels, majority), names)
  present = np.unique(test_labels)
  share = np.bincount(test_labels, minlength=num_classes)[present] / max(len(test_labels), 1)
  recall = 1.0 / num_classes
  f1 = 2 * share * recall / (share + recall)
  return {"majority_class": {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                             "macro_f1": m["macro_f1"], "class": majority},
          "chance": {"accuracy": recall, "balanced_accuracy": recall,
                     "macro_f1": float(np.mean(f1)) if len(f1) else 0.0}}
