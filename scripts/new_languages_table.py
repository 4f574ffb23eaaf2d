"""The new-languages comparison table (README): per-language validation loss and LID probe recall,
averaged over the original and the new languages, for each encoder.

  python scripts/new_languages_table.py --runs=W/base,W/no_replay,W/replay \
      --lid=W/lid_base,W/lid_no_replay,W/lid_replay

Reads each run's language_metrics.json (the last evaluation; xlsr_jax.training.language_metrics)
and each LID workdir's metrics.json (per_class_accuracy = recall per language).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os

import numpy as np

_base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                     "new_languages_base.py")
_spec = importlib.util.spec_from_file_location("new_languages_base", _base)
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)


def _mean(values: dict[str, float], languages: list[str]) -> float:
  missing = [lang for lang in languages if lang not in values]
  if missing:
    raise KeyError(f"languages {missing} not in {sorted(values)}")
  return float(np.mean([values[lang] for lang in languages]))


def row(run: str, lid: str | None) -> dict[str, float]:
  with open(os.path.join(run, "language_metrics.json")) as f:
    table = json.load(f)["languages"]
  last = lambda metric: {lang: m[metric][-1] for lang, m in table.items()}
  out = {}
  for group, langs in (("old", base.OLD), ("new", base.NEW)):
    out[f"loss_{group}"] = _mean(last("contrastive_loss"), langs)
    out[f"acc_{group}"] = _mean(last("accuracy"), langs)
  if lid:
    with open(os.path.join(lid, "metrics.json")) as f:
      result = json.load(f)
    recall = result["per_class_accuracy"]
    out.update(lid_old=_mean(recall, base.OLD), lid_new=_mean(recall, base.NEW),
               lid_all=float(result["accuracy"]))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", required=True, help="comma-separated pretraining workdirs")
  parser.add_argument("--lid", default="", help="comma-separated LID evaluate workdirs, same order")
  args = parser.parse_args()
  runs = args.runs.split(",")
  lids = args.lid.split(",") if args.lid else [None] * len(runs)
  print("| encoder | val. contrastive loss old (20) | new (5) | val. accuracy old | new | "
        "LID recall old | new | LID accuracy (25) |")
  print("|---|---|---|---|---|---|---|---|")
  for run, lid in zip(runs, lids):
    r = row(run, lid)
    lid_cells = (f"{r['lid_old']:.3f} | {r['lid_new']:.3f} | {r['lid_all']:.3f}" if lid
                 else "- | - | -")
    print(f"| {os.path.basename(os.path.normpath(run))} | {r['loss_old']:.3f} | {r['loss_new']:.3f} | "
          f"{r['acc_old']:.3f} | {r['acc_new']:.3f} | {lid_cells} |")


if __name__ == "__main__":
  main()
