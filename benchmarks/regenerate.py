"""Regenerate the results files under benchmarks/results/ that this machine can produce.

  python -m benchmarks.regenerate --dry-run          # what would run, what is skipped and why
  python -m benchmarks.regenerate                    # every job that runs here within the hour
  python -m benchmarks.regenerate --only=decoding,compile_time
  python -m benchmarks.regenerate --include_long     # also the TPU plans and the long proofs

Each job is the committed command that writes its results file. Jobs that print text (the older
benchmarks) have their output written to the file and their provenance (command, commit, machine,
load, date) recorded in benchmarks/results/SOURCES.json; JSON writers carry their own `meta`.
Afterwards run `python -m benchmarks.report` to regenerate the tables in the docs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.provenance import RESULTS_DIR, SOURCES_INDEX, provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "python"  # replaced by sys.executable when run


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  outputs: tuple[str, ...]  # results files (under benchmarks/results/) the job writes
  steps: tuple[tuple[str, ...], ...]  # commands, in order; {tmp} is a scratch directory
  minutes: float  # rough wall time on the 2-core development machine
  skip: str = ""  # why it does not run by default (empty: it runs)
  stdout_to: str = ""  # the stdout of step `stdout_step` is this results file (a text output)
  stdout_step: int = -1


_PLAN = ("-m", "xlsr_jax.plan")
JOBS = (
    Job("decoding", ("decoding_cpu.json",), (
        ("-m", "data_pipelines.synthetic_speech", "--data_dir={tmp}/tfds", "--config=translation"),
        ("-m", "xlsr_jax.evaluate", "--config=experiments/downstream/ast_de_fr.py",
         "--config.init=random", "--config.model.preset=tiny", "--config.data.data_dir={tmp}/tfds",
         "--config.finetune.num_steps=600", "--workdir={tmp}/ast"),
        ("-m", "benchmarks.decoding", "--workdir={tmp}/ast", "--data_dir={tmp}/tfds",
         "--reps=10", "--out=decoding_cpu.json")), 25),
    Job("compile_time", ("compile_time_cpu.txt",), (("-m", "benchmarks.compile_time"),), 5,
        stdout_to="compile_time_cpu.txt"),
    Job("train_step", ("train_step_cpu.txt",), (
        ("-m", "benchmarks.train_step", "--presets=tiny,base", "--reps=5", "--profile"),), 12,
        stdout_to="train_step_cpu.txt"),
    Job("scaling_cpu", ("scaling.json", "scaling.png"), (
        ("-m", "benchmarks.scaling", "--presets=tiny,base,xlsr_300m", "--skip_tpu"),), 12),
    Job("corpus_build", ("synthetic_speech_build.txt", "corpus_storage.json"), (
        ("-m", "data_pipelines.synthetic_speech", "--data_dir={tmp}/tfds_build"),
        ("-m", "benchmarks.corpus_storage", "--data_dir={tmp}/tfds_build")), 3,
        stdout_to="synthetic_speech_build.txt", stdout_step=0),
    Job("input_pipeline", ("input_pipeline_cpu.txt",), (("-m", "benchmarks.input_pipeline"),), 5,
        stdout_to="input_pipeline_cpu.txt"),
    Job("demo", ("demo_cpu.json",), (("-m", "benchmarks.demo_run"),), 12),
    Job("batching", ("batching_base.txt",), (
        ("-m", "data_pipelines.synthetic_speech", "--data_dir={tmp}/tfds"),
        ("-m", "benchmarks.batching", "--data_dir={tmp}/tfds", "--preset=base", "--reps=2")), 20,
        stdout_to="batching_base.txt"),
    Job("batching_e2e", ("batching_e2e_cpu.json",), (
        ("-m", "benchmarks.batching_e2e", "--workdir={tmp}/batching_e2e"),), 26),
    Job("test_tiers", ("test_tiers.json",), (("-m", "benchmarks.test_tiers"),), 18),
    Job("scaling_tpu", ("scaling.json", "scaling.png"), (
        ("-m", "benchmarks.scaling", "--skip_cpu"),), 30,
        skip="TPU part: four memory-only libtpu compiles of xlsr_300m for v5e-8, 6-9 min each"),
    *(Job(f"plan:{out}", (out,), (_PLAN + args,), minutes, skip=why, stdout_to=out)
      for out, args, minutes, why in (
          ("plan_xlsr_2b_v5p-64.json", ("--config=experiments/xlsr_2b.py", "--topology=v5p-64",
                                        "--json"), 27, "TPU plan: libtpu AOT + cost compiles"),
          ("plan_xlsr_300m_v5e-8.json", ("--config=experiments/xlsr_300m.py", "--topology=v5e-8",
                                         "--batch_per_chip=80", "--config.train.grad_accum_steps=40",
                                         "--json"), 18, "TPU plan: libtpu AOT + cost compiles"),
          ("plan_xlsr_300m_v5p-16.json", ("--config=experiments/xlsr_300m.py", "--topology=v5p-16",
                                          "--batch_per_chip=80", "--config.train.grad_accum_steps=40",
                                          "--json"), 19, "TPU plan: libtpu AOT + cost compiles"),
          ("plan_xlsr_300m_best_rq_v5p-16.json", ("--config=experiments/xlsr_300m.py",
                                                  "--topology=v5p-16", "--batch_per_chip=80",
                                                  "--config.train.grad_accum_steps=40",
                                                  "--config.objective.name=best_rq", "--json"), 19,
           "TPU plan: libtpu AOT + cost compiles"),
          ("plan_xlsr_300m_v5p-64_memory.json", ("--config=experiments/xlsr_300m.py",
                                                 "--topology=v5p-64", "--skip_cost", "--json"), 5,
           "TPU plan: libtpu AOT compile (several GiB; run TPU plans one at a time)"),
          ("plan_xlsr_1b_v5p-64_memory.json", ("--config=experiments/xlsr_1b.py", "--topology=v5p-64",
                                               "--skip_cost", "--json"), 6,
           "TPU plan: libtpu AOT compile (several GiB; run TPU plans one at a time)"),
          ("plan_xlsr_1b_v5p-128_memory.json", ("--config=experiments/xlsr_1b.py",
                                                "--topology=v5p-128", "--skip_cost", "--json"), 5,
           "TPU plan: libtpu AOT compile (several GiB; run TPU plans one at a time)"),
          ("plan_xlsr_2b_v5p-128_memory.json", ("--config=experiments/xlsr_2b.py",
                                                "--topology=v5p-128", "--skip_cost", "--json"), 5,
           "TPU plan: libtpu AOT compile (several GiB; run TPU plans one at a time)"),
          ("plan_omni_7b_v5p-64.json", ("--config=experiments/omni_7b.py", "--topology=v5p-64",
                                        "--json"), 17, "TPU plan: libtpu AOT + cost compiles"),
          ("plan_xlsr_2b_v5p-64_buckets.json", ("--config=experiments/xlsr_2b.py",
                                                "--topology=v5p-64",
                                                "--config.data.bucket_seconds=[2,4,8,12,16,20]",
                                                "--json"), 150,
           "TPU plan, bucketed: one compile per bucket (~25 min of a core each for xlsr_2b)"),
          ("plan_xlsr_300m_v5p-64_buckets.json", ("--config=experiments/xlsr_300m.py",
                                                  "--topology=v5p-64",
                                                  "--config.data.bucket_seconds=[2,4,8,12,16,20]",
                                                  "--json"), 120,
           "TPU plan, bucketed: one compile per bucket"),
      )),
    Job("train_step_best_rq", ("train_step_best_rq_cpu.txt",), (
        ("-m", "benchmarks.train_step", "--presets=tiny,base",
         "--objectives=wav2vec2,best_rq,best_rq_fbank", "--reps=5"),), 15,
        stdout_to="train_step_best_rq_cpu.txt"),
    Job("beam_build", ("beam_build_cpu.json",), (("benchmarks/beam_build.py", "--repeats", "2"),), 15,
        skip="needs the Beam extra: pip install -r requirements-beam.txt (the full test tier has it)"),
    Job("beam_dataflow_dry_run", ("beam_dataflow_dry_run.json",), (
        ("benchmarks/beam_dataflow_dry_run.py",),), 2,
        skip="needs apache-beam[gcp] (Dataflow's client), not in any requirements file"),
    Job("transfer", ("transfer_cpu.json", "transfer_cpu.md", "transfer_cpu_curves.png"), (
        ("-m", "benchmarks.transfer", "--workdir={tmp}/transfer",
         "--probes=lid_heldout,lid_seen,sid_heldout"),), 90,
        skip="long proof: six pretraining runs (3 objectives x 2 seeds) and 24 probes"),
    Job("downstream_proof", ("downstream_proof_bucketed.md",), (), 180,
        skip="long proof: pretraining (45+ min) then six probes and two ASR fine-tunings; the "
             "file is a hand-written report of those runs (commands inside)"),
    Job("ast_proof", ("ast_proof_cpu.md",), (), 110,
        skip="long proof: two 10,000-step translation runs (52 min each, side by side); the file "
             "is a hand-written report of those runs (commands inside)"),
)


def outputs() -> set[str]:
  """Every results file some job writes (what the docs may name before it first exists)."""
  return {o for job in JOBS for o in job.outputs}


def _record_source(name: str, meta: dict) -> None:
  with open(SOURCES_INDEX) as f:
    index = json.load(f)
  index[name] = meta
  with open(SOURCES_INDEX, "w") as f:
    json.dump(index, f, indent=1)
    f.write("\n")


def run_job(job: Job, tmp: str) -> None:
  for i, step in enumerate(job.steps):
    argv = [sys.executable, *(a.replace("{tmp}", tmp) for a in step)]
    shown = " ".join(["python", *argv[1:]])
    print(f"+ {shown}", flush=True)
    if job.stdout_to and i == job.stdout_step % len(job.steps):
      meta = provenance(argv=["python", *step])
      meta["command"] = shown
      proc = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
      if proc.returncode:
        raise SystemExit(f"{job.name}: exit {proc.returncode}")
      with open(os.path.join(RESULTS_DIR, job.stdout_to), "w") as f:
        f.write(proc.stdout)
      _record_source(job.stdout_to, meta)
    else:
      proc = subprocess.run(argv, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
      if proc.returncode:
        raise SystemExit(f"{job.name}: exit {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dry-run", action="store_true", help="list the jobs; run nothing")
  parser.add_argument("--only", default="", help="comma-separated job names")
  parser.add_argument("--include_long", action="store_true",
                      help="also the skipped jobs that have a command (TPU plans)")
  parser.add_argument("--tmp", default="/tmp/xlsr_regenerate", help="scratch directory (a new subdirectory per run)")
  args = parser.parse_args(argv)
  only = [n for n in args.only.split(",") if n]
  unknown = set(only) - {j.name for j in JOBS}
  if unknown:
    print(f"unknown job(s) {sorted(unknown)}; known: {', '.join(j.name for j in JOBS)}",
          file=sys.stderr)
    return 2
  selected, skipped = [], []
  for job in JOBS:
    if only and job.name not in only:
      continue
    if job.skip and not (job.steps and (args.include_long or job.name in only)):
      skipped.append(job)
    else:
      selected.append(job)
  total = sum(j.minutes for j in selected)
  print(f"will run {len(selected)} job(s), about {total:.0f} min on 2 CPU cores:")
  for job in selected:
    print(f"  {job.name:40s} ~{job.minutes:>4.0f} min -> {', '.join(job.outputs)}")
    for step in job.steps:
      print("      python " + " ".join(step))
  print(f"skipped {len(skipped)}:")
  for job in skipped:
    how = "" if job.steps else " (no command regenerates it)"
    print(f"  {job.name:40s} ~{job.minutes:>4.0f} min: {job.skip}{how}")
  if args.dry_run:
    return 0
  os.makedirs(args.tmp, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="run_", dir=args.tmp)  # fresh: nothing built or trained before
  print(f"scratch directory: {tmp}")
  for job in selected:
    start = time.perf_counter()
    run_job(job, tmp)
    print(f"{job.name}: done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
  print("now run: python -m benchmarks.report")
  return 0


if __name__ == "__main__":
  sys.exit(main())
