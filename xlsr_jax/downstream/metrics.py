"""Downstream metrics: WER / CER (Levenshtein), per language and overall; accuracy, confusion matrix.

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


def classification_metrics(labels: Sequence[int], predictions: Sequence[int],
                           class_names: Sequence[str]) -> dict:
  """{"accuracy", "error_rate", "num_utterances", "per_class_accuracy": {name: acc}} and the
  confusion matrix under "confusion" (a list of lists, JSON-ready)."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  matrix = confusion_matrix(labels, predictions, len(class_names))
  accuracy = float(np.mean(labels == predictions)) if len(labels) else 0.0
  per_class = {name: float(matrix[i, i] / matrix[i].sum())
               for i, name in enumerate(class_names) if matrix[i].sum()}
  return {"accuracy": accuracy, "error_rate": 1.0 - accuracy, "num_utterances": int(len(labels)),
          "per_class_accuracy": per_class, "confusion": matrix.tolist()}
