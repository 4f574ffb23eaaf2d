"""The report of one downstream evaluation: report.md, metrics.json and PNG plots.

`write_report(out_dir, task, metrics, ...)` writes into `out_dir`:
  report.md              title, a table of the metrics, a per-language table when
                         `metrics["per_language"]` is given, and links to the plots below
  metrics.json           `metrics` as given (numpy values as Python numbers, NaN/Inf as null)
  confusion_matrix.png   row-normalised confusion matrix with class labels on both axes
  confusion_matrix.csv   its counts, with the labels as the first row and column
  embeddings_pca.png     per-utterance embeddings projected on their first two principal
                         components, coloured by label
  curves.png             one panel per curve (loss, accuracy, ... against the step)
Each plot is written only when its data is given. Plots use matplotlib's object API on the Agg
canvas (no pyplot, no display, no global backend switch), so they work on headless machines and
in threads. The pure helpers (`confusion_matrix`, `per_class_accuracy`, `normalize_rows`,
`pca_2d`, `markdown_table`) are tested on their own.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
EMBEDDINGS_PNG = "embeddings_pca.png"
CURVES_PNG = "curves.png"
_DPI = 120
_MAX_TICK_LABELS = 60  # more classes than this (1,251 speakers): no tick labels, no cell values
_MAX_CELL_VALUES = 30
_MAX_LEGEND_ENTRIES = 40


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
  """Counts `[num_classes (true), num_classes (predicted)]` int64 from class ids `[n]` each.

  Raises ValueError when the lengths differ or an id is outside [0, num_classes).
  """
  y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"y_true has {y_true.size} labels, y_pred {y_pred.size}")
  for name, ids in (("y_true", y_true), ("y_pred", y_pred)):
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
      raise ValueError(f"{name} holds class ids {sorted(set(bad.tolist()))[:10]} outside "
                       f"[0, {num_classes})")
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
  return counts


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """Recall of each true class `[num_classes]` from counts `[C, C]`; NaN for a class never seen."""
  totals = confusion.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def normalize_rows(confusion: np.ndarray) -> np.ndarray:
  """Each row of `[C, C]` divided by its sum (float64); a row of zeros stays zeros."""
  totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
  return np.divide(confusion, totals, out=np.zeros(confusion.shape, np.float64), where=totals > 0)


def pca_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projection `[n, 2]` of `[n, dim]` on its first two principal components (numpy SVD), and
  the share of the variance each explains `[2]` (zeros where there is no variance).

  The sign of each component is fixed (largest loading positive) so the plot is reproducible.
  Fewer than two dimensions or points give zero columns for the missing components.
  """
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"embeddings must be [n > 0, dim], found shape {x.shape}")
  centred = x - x.mean(axis=0)
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)  # vt: [k, dim]
  k = min(2, vt.shape[0])
  components = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
  projected = np.zeros((x.shape[0], 2))
  projected[:, :k] = centred @ components.T
  variance = singular**2
  explained = np.zeros(2)
  if variance.sum() > 0:
    explained[:k] = variance[:k] / variance.sum()
  return projected, explained


def _format(value: Any) -> str:
  """A table cell: 4 significant digits for floats, integers as they are, short lists inline."""
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return "nan" if math.isnan(value) else f"{float(value):.4g}"
  if isinstance(value, (list, tuple, np.ndarray)):
    values = list(np.asarray(value).reshape(-1))
    if len(values) > 8:
      return f"({len(values)} values, in metrics.json)"
    return "[" + ", ".join(_format(v) for v in values) + "]"
  return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub Markdown table; cells formatted by `_format` (4 significant digits for floats)."""
  lines = ["| " + " | ".join(_format(h) for h in header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_format(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


_OWN_SECTIONS = ("per_language", "per_class", "baselines", "l2_search", "per_class_accuracy")
_BASELINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
  """`{"a": {"b": 1}, "c": 2}` -> `[("a.b", 1), ("c", 2)]`, leaving out the keys that get their
  own section (per_language, per_class, baselines, l2_search, per_class_accuracy)."""
  rows = []
  for key, value in metrics.items():
    if key in _OWN_SECTIONS:
      continue
    if isinstance(value, Mapping):
      rows += _flatten(value, f"{prefix}{key}.")
    else:
      rows.append((f"{prefix}{key}", value))
  return rows


def per_language_table(per_language: Mapping[str, Any]) -> str:
  """Rows per language from `{lang: {metric: value}}` (columns in first-seen order) or
  `{lang: value}` (one column "value")."""
  columns: list[str] = []
  for value in per_language.values():
    for key in (value if isinstance(value, Mapping) else {"value": value}):
      if key not in columns:
        columns.append(key)
  rows = []
  for lang, value in sorted(per_language.items()):
    value = value if isinstance(value, Mapping) else {"value": value}
    rows.append([lang] + [value.get(c, "") for c in columns])
  return markdown_table(["language"] + columns, rows)


def baselines_table(metrics: Mapping[str, Any]) -> str:
  """metric | this model | majority class | chance, for accuracy, balanced accuracy, macro-F1."""
  b = metrics["baselines"]
  rows = [[m, metrics.get(m, ""), b.get("majority_class", {}).get(m, ""),
           b.get("chance", {}).get(m, "")] for m in _BASELINE_METRICS if m in metrics]
  return markdown_table(["metric", "this model", "majority class", "chance"], rows)


def _to_json(value: Any) -> Any:
  """`value` with numpy arrays and scalars as Python lists and numbers, NaN and Inf as None."""
  if isinstance(value, Mapping):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_to_json(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=_DPI)
  FigureCanvasAgg(figure)
  return figure


def plot_confusion(path: str, confusion: np.ndarray, labels: Sequence[str], title: str) -> None:
  """Row-normalised confusion matrix `[C, C]` (true class down, predicted across) as a PNG.

  The figure grows with C (about 11 inches for 25 classes); cell values (percent) are printed up
  to 30 classes and tick labels up to 60.
  """
  num_classes = confusion.shape[0]
  side = min(max(4.5, 0.3 * num_classes + 3.0), 18.0)
  figure = _new_figure(side + 1.2, side)
  ax = figure.add_subplot()
  normalised = normalize_rows(confusion)
  image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  if num_classes <= _MAX_TICK_LABELS:
    ticks = np.arange(num_classes)
    tick_font = 9 if num_classes <= 30 else 6
    ax.set_xticks(ticks, labels=list(labels), rotation=90, fontsize=tick_font)
    ax.set_yticks(ticks, labels=list(labels), fontsize=tick_font)
  if num_classes <= _MAX_CELL_VALUES:
    cell_font = max(6.0, 10.0 - num_classes / 6)
    for (row, col), share in np.ndenumerate(normalised):
      if confusion[row, col]:
        ax.text(col, row, f"{100 * share:.0f}", ha="center", va="center", fontsize=cell_font,
                color="white" if share > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  figure.tight_layout()
  figure.savefig(path)


def plot_embeddings(path: str, points: np.ndarray, labels: Sequence[str],
                    explained: np.ndarray, title: str) -> None:
  """Scatter of 2-D points `[n, 2]` coloured by label `[n]`; a legend up to 40 labels."""
  names = sorted(set(labels))
  figure = _new_figure(9.0 if len(names) <= _MAX_LEGEND_ENTRIES else 7.0, 6.5)
  ax = figure.add_subplot()
  colours = _colours(len(names))
  labels_arr = np.asarray(labels)
  for name, colour in zip(names, colours):
    chosen = labels_arr == name
    ax.scatter(points[chosen, 0], points[chosen, 1], s=14, color=colour, label=name, alpha=0.8,
               linewidths=0)
  if len(names) <= _MAX_LEGEND_ENTRIES:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=1.5,
              ncol=1 + len(names) // 20, frameon=False)
  ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)")
  ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% of variance)")
  ax.set_title(title)
  figure.tight_layout()
  figure.savefig(path)


def _colours(count: int) -> list:
  """`count` distinct colours: tab10 / tab20 / tab20+tab20b+tab20c, then a cyclic colour map."""
  from matplotlib import colormaps
  if count <= 10:
    return [colormaps["tab10"](i) for i in range(count)]
  table = [colormaps[m](i) for m in ("tab20", "tab20b", "tab20c") for i in range(20)]
  if count <= len(table):
    return table[:count]
  return [colormaps["hsv"](i / count) for i in range(count)]


def plot_curves(path: str, curves: Mapping[str, Sequence[tuple[int, float]]], title: str) -> None:
  """One panel per curve `{name: [(step, value), ...]}`, two panels a row."""
  columns = min(2, len(curves))
  rows = math.ceil(len(curves) / columns)
  figure = _new_figure(5.0 * columns, 3.4 * rows)
  for i, (name, points) in enumerate(curves.items()):
    ax = figure.add_subplot(rows, columns, i + 1)
    steps, values = zip(*points)
    ax.plot(steps, values, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path)


def _check(confusion, labels, embeddings, embedding_labels, curves) -> None:
  """ValueError naming the argument whose shape or length does not fit."""
  if confusion is not None:
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
      raise ValueError(f"confusion must be [classes, classes], found shape {confusion.shape}")
    if labels is not None and len(labels) != confusion.shape[0]:
      raise ValueError(f"labels has {len(labels)} names for a {confusion.shape[0]}-class "
                       "confusion matrix")
  if embeddings is not None:
    if embeddings.ndim != 2:
      raise ValueError(f"embeddings must be [utterances, dim], found shape {embeddings.shape}")
    if embedding_labels is None or len(embedding_labels) != embeddings.shape[0]:
      found = None if embedding_labels is None else len(embedding_labels)
      raise ValueError(f"embedding_labels must name each of the {embeddings.shape[0]} "
                       f"embeddings, found {found}")
  for name, points in (curves or {}).items():
    if not points or any(len(p) != 2 for p in points):
      raise ValueError(f"curve {name!r} must be a non-empty list of (step, value)")


def write_report(out_dir: str | os.PathLike, task: str, metrics: dict, *,
                 confusion: np.ndarray | None = None, labels: list[str] | None = None,
                 embeddings: np.ndarray | None = None,
                 embedding_labels: list[str] | None = None,
                 curves: dict[str, list[tuple[int, float]]] | None = None,
                 title: str | None = None) -> str:
  """Writes report.md, metrics.json and the plots of what is given into `out_dir`.

  confusion: counts `[C, C]` (true class down, predicted across), labels: `[C]` class names
    (default "0", "1", ...). embeddings: `[n, dim]` per-utterance vectors with embedding_labels
    `[n]` (language or speaker). curves: `{name: [(step, value), ...]}`.
  Returns the path of report.md.
  """
  confusion = None if confusion is None else np.asarray(confusion)
  embeddings = None if embeddings is None else np.asarray(embeddings)
  _check(confusion, labels, embeddings, embedding_labels, curves)
  os.makedirs(out_dir, exist_ok=True)
  title = title or f"{task} evaluation"
  with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(_to_json(metrics), f, indent=1, ensure_ascii=False, allow_nan=False)
    f.write("\n")
  parts = [f"# {title}", "", f"Task: `{task}`. Every number is also in `metrics.json`.", "",
           "## Metrics", "", markdown_table(["metric", "value"], _flatten(metrics))]
  if isinstance(metrics.get("baselines"), Mapping) and metrics["baselines"]:
    parts += ["", "## Against prior-only classifiers", "", baselines_table(metrics), "",
              "Majority class: always the most frequent training class; chance: a uniform "
              "random guess. A probe that only learned the class prior scores near them."]
  if isinstance(metrics.get("per_language"), Mapping) and metrics["per_language"]:
    parts += ["", "## Per language", "", per_language_table(metrics["per_language"])]
  if isinstance(metrics.get("per_class"), Mapping) and metrics["per_class"]:
    parts += ["", "## Per class", "", per_language_table(metrics["per_class"]).replace(
        "| language |", "| class |", 1)]
  search = (metrics.get("probe") or {}).get("l2_search") if isinstance(
      metrics.get("probe"), Mapping) else None
  if search:
    columns = list(search[0])
    parts += ["", "## L2 strength (chosen on validation)", "",
              markdown_table(columns, [[row.get(c, "") for c in columns] for row in search])]
  if confusion is not None:
    names = list(labels) if labels is not None else [str(i) for i in range(confusion.shape[0])]
    plot_confusion(os.path.join(out_dir, CONFUSION_PNG), confusion, names,
                   f"{title}: confusion matrix")
    _write_confusion_csv(os.path.join(out_dir, CONFUSION_CSV), confusion, names)
    parts += ["", "## Confusion matrix", "", f"![confusion matrix]({CONFUSION_PNG})", "",
              f"True class down, predicted across; each row sums to 100% of its class "
              f"({int(confusion.sum())} utterances; counts in `{CONFUSION_CSV}`)."]
  if embeddings is not None:
    points, explained = pca_2d(embeddings)
    plot_embeddings(os.path.join(out_dir, EMBEDDINGS_PNG), points, list(embedding_labels),
                    explained, f"{title}: utterance embeddings (PCA)")
    parts += ["", "## Embeddings", "", f"![embeddings]({EMBEDDINGS_PNG})", "",
              f"{embeddings.shape[0]} per-utterance embeddings of dimension {embeddings.shape[1]} "
              f"on their first two principal components ({100 * explained.sum():.0f}% of the "
              f"variance), coloured by label ({len(set(embedding_labels))} labels)."]
  if curves:
    plot_curves(os.path.join(out_dir, CURVES_PNG), curves, title)
    parts += ["", "## Curves", "", f"![curves]({CURVES_PNG})"]
  path = os.path.join(out_dir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(parts) + "\n")
  return path


def _write_confusion_csv(path: str, confusion: np.ndarray, labels: Sequence[str]) -> None:
  """Counts with a header row of predicted labels and a first column of true labels."""
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["true \\ predicted"] + list(labels))
    for label, row in zip(labels, confusion):
      writer.writerow([label] + [int(c) for c in row])
