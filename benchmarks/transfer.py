"""Transfer benchmark: which objective's representations carry to languages never pretrained on,
per unit of compute.

  python -m benchmarks.transfer --workdir=W [--variants=wav2vec2,best_rq,best_rq_fbank]
      [--seeds=0,1] [--reference_steps=400] [--out=benchmarks/results/transfer_cpu]

1. Calibrate: each variant's train step is timed on this machine, in this process, on every
   duration bucket of experiments/transfer.py (the demo's 2 / 3 / 5 / 8 s crops, 24 s of audio a
   step), the variants' steps alternating; a variant then gets reference_steps x (wav2vec 2.0's mean step time / its
   own) steps: equal measured compute. Analytic model FLOPs are reported beside.
2. Pretrain each variant x seed on the 20 seen languages (`python -m xlsr_jax.main
   --config=experiments/transfer.py`), export it (`python -m xlsr_jax.export`).
3. Probe each export and the random-init encoder of each frontend with the L-BFGS probe
   (experiments/downstream/{lid,sid}.py): LID and SID on the 5 held-out languages alone, and on
   the 20 seen ones; the first probe of each kind also fits the FBANK and MFCC probes.
   Each stage's output stays in W (calibration.json, each run's workdir (history.json) and export, each probe's
   metrics.json): the same command again resumes where it stopped.
4. Write OUT.json (every figure, the validation curves, the command, commit, machine, load) and
   OUT.md (the table), and print the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from benchmarks.provenance import provenance, write_results
from data_pipelines import DEFAULT_DATA_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "transfer.py")
VARIANTS = {
    "wav2vec2": {"objective.name": "wav2vec2"},
    "best_rq": {"objective.name": "best_rq"},
    "best_rq_fbank": {"objective.name": "best_rq", "model.frontend": "fbank"},
}
PROBES = {  # name: (downstream config, language group)
    "lid_heldout": ("lid", "NEW"), "lid_seen": ("lid", "OLD"),
    "sid_heldout": ("sid", "NEW"), "sid_seen": ("sid", "OLD"),
}


def _base_module():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "new_languages_base", os.path.join(REPO, "experiments", "new_languages_base.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _overrides(values: dict[str, Any]) -> list[str]:
  return [f"--config.{k}={v}" for k, v in values.items()]


def load_variant_config(variant: str, data_dir: str):
  """experiments/transfer.py with the variant's overrides, validated as main does."""
  from xlsr_jax.config_loading import load_validated
  from xlsr_jax.training.config_defaults import get_default_config
  pairs = [(k, str(v)) for k, v in dict(VARIANTS[variant], **{"data.data_dir": data_dir}).items()]
  return load_validated(CONFIG, pairs, get_default_config(), "--config")


def calibrate(variants: list[str], data_dir: str, rounds: int = 3) -> dict[str, dict[str, Any]]:
  """Per variant: mean seconds per train step over the config's duration buckets and the analytic
  model FLOPs per step. Every (variant, bucket) step is compiled and warmed up first; then
  `rounds` rounds each time one step of every (variant, bucket) in turn, so load from elsewhere on
  a shared machine hits all variants alike. Synthetic audio of each bucket's shape."""
  import jax
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training import flops
  from xlsr_jax.training.batch_size import bucket_spec
  from xlsr_jax.training.state import build_trainer
  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  runs, model_flops = {}, {}
  for variant in variants:
    config = load_variant_config(variant, data_dir)
    spec = bucket_spec(config, 1)
    for crop, rows in zip(spec.lengths, spec.batch_sizes):
      trainer = build_trainer(config, mesh, crop)
      batch = {"waveform": rng.standard_normal((rows, crop)).astype(np.float32),
               "lengths": np.full((rows,), crop, np.int32)}
      state, m = trainer.step(trainer.create_state(), batch)
      jax.block_until_ready(m)
      runs[variant, crop] = [trainer, state, batch]
      size = flops.StepSize(rows, crop, trainer.shapes.max_masked, config.objective.num_negatives)
      model_flops[variant, crop] = flops.train_step_flops(
          trainer.model.config, size, trainer.objective.forward_flops(size))["total"]
  seconds: dict[tuple, list[float]] = {key: [] for key in runs}
  for _ in range(rounds):
    for key, run in runs.items():
      start = time.perf_counter()
      run[1], m = run[0].step(run[1], run[2])
      jax.block_until_ready(m)
      seconds[key].append(time.perf_counter() - start)
  out = {}
  for variant in variants:
    keys = [k for k in runs if k[0] == variant]
    by_bucket = {k[1] / 16000: float(np.median(seconds[k])) for k in keys}
    out[variant] = dict(step_seconds_by_bucket=by_bucket,
                        step_seconds=float(np.mean(list(by_bucket.values()))),
                        model_tflops_per_step=float(np.mean([model_flops[k] for k in keys])) / 1e12)
  return out


def _run(cmd: list[str], log: str) -> None:
  """A subprocess whose output goes to `log`; a failure raises naming the log."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  start = time.perf_counter()
  with open(log, "w") as f:
    code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
  if code:
    raise RuntimeError(f"{' '.join(cmd)} exited {code}; see {log}")
  print(f"  {' '.join(cmd[2:4])} ... {time.perf_counter() - start:.0f} s", flush=True)


def pretrain(variant: str, seed: int, steps: int, workdir: str, data_dir: str) -> dict[str, Any]:
  """Pretrains and exports one variant x seed (resumes a finished or interrupted run)."""
  from xlsr_jax.training import metrics_file
  run_dir = os.path.join(workdir, f"{variant}_s{seed}")
  export_dir = os.path.join(run_dir, "export")
  values = dict(VARIANTS[variant], **{"train.seed": seed, "train.num_steps": steps,
                                      "data.data_dir": data_dir})
  start = time.perf_counter()
  if not os.path.exists(os.path.join(export_dir, "model_config.json")):
    os.makedirs(run_dir, exist_ok=True)
    _run([sys.executable, "-m", "xlsr_jax.main", f"--config={CONFIG}", f"--workdir={run_dir}",
          *_overrides(values)], os.path.join(run_dir, "main.log"))
    _run([sys.executable, "-m", "xlsr_jax.export", f"--workdir={run_dir}", f"--out={export_dir}"],
         os.path.join(run_dir, "export.log"))
  history = metrics_file.read(run_dir)
  logged = [r for r in history if "steps_per_second" in r]
  train_seconds = sum((r["step"] - prev) / r["steps_per_second"]
                      for prev, r in zip([0] + [r["step"] for r in logged], logged))
  curve = [{"step": r["step"], "eval_loss": r["eval_loss"], "eval_accuracy": r.get("eval_accuracy")}
           for r in history if "eval_loss" in r]
  return dict(run_dir=run_dir, export=export_dir, steps=steps, curve=curve,
              wall_seconds=time.perf_counter() - start, train_seconds=train_seconds or None)


def probe(init: str, name: str, workdir: str, data_dir: str, languages: list[str],
          handmade: bool, frontend: str = "cnn") -> dict[str, Any]:
  """One L-BFGS probe (in this process) -> its metrics.json (read back if already there)."""
  from xlsr_jax import evaluate
  task, _ = PROBES[name]
  out = os.path.join(workdir, name)
  path = os.path.join(out, "metrics.json")
  if not os.path.exists(path):
    args = [f"--config={os.path.join(REPO, 'experiments', 'downstream', task + '.py')}",
            f"--config.init={init}", f"--workdir={out}", f"--config.data.data_dir={data_dir}",
            f"--config.data.languages={languages!r}".replace(" ", ""),
            f"--config.probe.handmade_baselines={str(handmade).lower()}"]
    if init == "random":
      args += ["--config.model.preset=tiny", f"--config.model.frontend={frontend}"]
    code = evaluate.main(args)
    if code:
      raise RuntimeError(f"probe {name} of {init} exited {code}")
  with open(path) as f:
    return json.load(f)


def finished(workdir: str, variant: str, seed: int, probe_names: list[str]) -> bool:
  """Whether a run's export and every probe of it are already in the workdir."""
  run_dir = os.path.join(workdir, f"{variant}_s{seed}")
  return (os.path.exists(os.path.join(run_dir, "export", "model_config.json"))
          and all(os.path.exists(os.path.join(run_dir, n, "metrics.json")) for n in probe_names))


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(metrics[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")}


def table(result: dict[str, Any]) -> str:
  """The markdown table: accuracy per probe, one row per encoder and seed, then the baselines."""
  names = list(result["baselines"])
  head = ("| encoder | seed | steps | train s | model TFLOP/step | "
          + " | ".join(n.replace("_", " ") for n in names) + " |")
  lines = [head, "|" + "---|" * (5 + len(names))]
  for row in result["rows"]:
    cells = [row["encoder"], str(row.get("seed", "")), str(row.get("steps", "")),
             f"{row['train_seconds']:.0f}" if row.get("train_seconds") else "",
             f"{row['model_tflops_per_step']:.4f}" if row.get("model_tflops_per_step") else ""]
    cells += [f"{100 * row['probes'][n]['accuracy']:.1f}" for n in names]
    lines.append("| " + " | ".join(cells) + " |")
  for key, label in (("fbank", "FBANK probe"), ("mfcc", "MFCC probe"),
                     ("majority_class", "majority class"), ("chance", "chance")):
    cells = [label, "", "", "", ""] + [f"{100 * result['baselines'][n][key]['accuracy']:.1f}"
                                       for n in names]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], path: str) -> None:
  """Validation loss against training seconds, one panel per objective (their losses differ in
  kind: contrastive vs cross-entropy over codes), one line per seed."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  runs = [r for r in rows if r.get("curve")]
  encoders = sorted({r["encoder"] for r in runs})
  fig = Figure(figsize=(4.5 * len(encoders), 3.4))
  FigureCanvasAgg(fig)
  for i, encoder in enumerate(encoders):
    ax = fig.add_subplot(1, len(encoders), i + 1)
    for r in (r for r in runs if r["encoder"] == encoder):
      ax.plot([c["step"] for c in r["curve"]], [c["eval_loss"] for c in r["curve"]], marker="o",
              label=f"seed {r['seed']}")
    ax.set_title(encoder)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats / masked frame)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variants", default="wav2vec2,best_rq,best_rq_fbank")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--reference_steps", type=int, default=400,
                      help="wav2vec 2.0's steps; the others get the same measured compute")
  parser.add_argument("--probes", default=",".join(PROBES), help=f"a subset of {list(PROBES)}")
  parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "transfer_cpu"))
  parser.add_argument("--note", default="", help="what else ran on the machine, for the record")
  parser.add_argument("--only_finished", action="store_true",
                      help="run nothing new: write the results of the runs and probes already in W "
                           "(the others are listed as not run)")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
  probe_names = args.probes.split(",")
  for flag, names, known in (("--variants", variants, VARIANTS), ("--probes", probe_names, PROBES)):
    unknown = [n for n in names if n not in known]
    if unknown:
      print(f"{flag}: {unknown} not in {sorted(known)}", file=sys.stderr)
      return 2
  workdir, data_dir = os.path.abspath(args.workdir), os.path.abspath(args.data_dir)
  os.makedirs(workdir, exist_ok=True)
  base = _base_module()
  groups = {"NEW": base.NEW, "OLD": base.OLD}
  meta = provenance(notes=args.note, argv=["benchmarks/transfer.py", *(
      argv if argv is not None else sys.argv[1:])])  # the machine's load when it started

  print("calibrating step times (every variant and bucket compiled, then their steps alternating)",
        flush=True)
  calibration_path = os.path.join(workdir, "calibration.json")
  if os.path.exists(calibration_path):  # a resumed benchmark keeps its steps
    with open(calibration_path) as f:
      calibration = json.load(f)
    print(f"  read {calibration_path}", flush=True)
  else:
    calibration = calibrate(variants, data_dir)
    with open(calibration_path, "w") as f:
      json.dump(calibration, f, indent=1)
  reference = calibration.get("wav2vec2", calibration[variants[0]])["step_seconds"]
  steps = {v: max(1, round(args.reference_steps * reference / c["step_seconds"]))
           for v, c in calibration.items()}
  for v, c in calibration.items():
    print(f"  {v}: {c['step_seconds'] * 1000:.0f} ms/step, {c['model_tflops_per_step']:.4f} "
          f"TFLOP/step -> {steps[v]} steps", flush=True)

  rows: list[dict[str, Any]] = []
  random_rows: list[dict[str, Any]] = []
  baselines: dict[str, dict] = {}
  for frontend in sorted({"fbank" if "fbank" in v else "cnn" for v in variants}):
    probes = {}
    for n in probe_names:
      metrics = probe("random", n, os.path.join(workdir, f"random_{frontend}"), data_dir,
                      groups[PROBES[n][1]], handmade=not baselines.get(n), frontend=frontend)
      probes[n] = _scores(metrics)
      if n not in baselines:
        baselines[n] = metrics["baselines"]
    random_rows.append(dict(encoder=f"random init ({frontend})", probes=probes))

  not_run = []
  for v in variants:
    for seed in seeds:
      if args.only_finished and not finished(workdir, v, seed, probe_names):
        not_run.append(f"{v} seed {seed}")
        continue
      print(f"pretraining {v} seed {seed} ({steps[v]} steps)", flush=True)
      run = pretrain(v, seed, steps[v], workdir, data_dir)
      probes = {n: _scores(probe(run["export"], n, run["run_dir"], data_dir, groups[PROBES[n][1]],
                                 False)) for n in probe_names}
      rows.append(dict(encoder=v, seed=seed, steps=steps[v], probes=probes,
                       train_seconds=run["train_seconds"], wall_seconds=run["wall_seconds"],
                       model_tflops_per_step=calibration[v]["model_tflops_per_step"],
                       curve=run["curve"]))
      print(f"  {v} s{seed}: " + ", ".join(f"{n} {100 * p['accuracy']:.1f}"
                                           for n, p in probes.items()), flush=True)
  rows += random_rows
  result = dict(
      finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      load_average_end=os.getloadavg(), held_out_languages=base.NEW, seen_languages=base.OLD,
      reference_steps=args.reference_steps, calibration=calibration, not_run=not_run,
      rows=rows, baselines={n: {k: _scores(b[k]) for k in ("fbank", "mfcc", "majority_class",
                                                          "chance")} for n, b in baselines.items()})
  text = table(result)
  if not_run:
    text += f"\n\nNot run (stopped before they finished): {', '.join(not_run)}."
  out_dir, name = os.path.split(os.path.abspath(args.out))
  plot_curves(rows, args.out + "_curves.png")
  write_results(name + ".json", result, results_dir=out_dir, meta=meta)
  with open(args.out + ".md", "w") as f:
    f.write(f"Written by `{meta['command']}` at {meta['commit']} ({meta['date']}); {meta['machine']};"
            f" load at the start {meta['concurrent']['load_avg']}; {args.note or 'no other jobs noted'}"
            f".\n\n{text}\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
