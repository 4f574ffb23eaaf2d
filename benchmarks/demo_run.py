"""The README's demo, timed and recorded: benchmarks/results/demo_cpu.json.

  python -m benchmarks.demo_run                    # an empty data dir: the corpus build is timed too
  python -m benchmarks.demo_run --data_dir=DIR     # reuse a built synthetic_speech/default

Runs `python -m xlsr_jax.main --config=experiments/demo.py` (the README's command) in a temporary
workdir and records: the corpus build time, the wall time end to end, the steps per second and
real audio-seconds per second of the last logged interval (compiled), the padding and masked
shares, the validation contrastive loss (bits) and accuracy at the first and last evaluation, the
code perplexity, and how many training utterances were dropped as too short (bucket_plan.json).
Takes about 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks.provenance import provenance, write_results

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir; default: a new empty one.")
_OUT = flags.DEFINE_string("out", "demo_cpu.json", "Results file name under benchmarks/results/.")
_EXTRA = flags.DEFINE_multi_string("set", [], "Extra --config.a.b=v overrides (recorded).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summarise(workdir: str, output: str, wall_s: float) -> dict[str, object]:
  """The demo's figures from its workdir (history.json, bucket_plan.json) and console output."""
  with open(os.path.join(workdir, "history.json")) as f:
    history = json.load(f)
  train = [m for m in history if "contrastive_loss" in m]
  evals = [m for m in history if "eval_contrastive_loss" in m]
  with open(os.path.join(workdir, "bucket_plan.json")) as f:
    plan = json.load(f)
  built = re.search(r"built \S+ in (\d+) s", output)
  bits = lambda nats: nats / math.log(2)
  last = train[-1]
  figures = {
      "corpus build (s)": int(built.group(1)) if built else "not built (data dir had it)",
      "wall time end to end (min)": round(wall_s / 60, 1),
      "steps": last["step"],
      "steps/s, last interval": round(last["steps_per_second"], 2),
      "real audio-seconds/s, last interval": round(last["real_audio_seconds_per_second"], 1),
      "padding fraction, last interval": round(last["padding_fraction"], 3),
      "masked share of each row, last interval": round(last["masked_fraction"], 3),
      "training utterances dropped (too short) / total": (
          f"{plan['dropped_utterances']} / {plan['dropped_utterances'] + plan['kept_utterances']}"),
  }
  if evals:
    first, end = evals[0], evals[-1]
    figures[f"validation contrastive loss (bits), step {first['step']} -> {end['step']}"] = (
        f"{bits(first['eval_contrastive_loss']):.2f} -> {bits(end['eval_contrastive_loss']):.2f}")
    figures[f"validation accuracy, step {first['step']} -> {end['step']}"] = (
        f"{first['eval_accuracy']:.3f} -> {end['eval_accuracy']:.3f}")
    if "eval_code_perplexity" in end:
      figures["validation code perplexity, last"] = round(end["eval_code_perplexity"], 1)
  return figures


def main(argv) -> None:
  del argv
  start_meta = provenance()  # the machine's load when the run starts
  with tempfile.TemporaryDirectory(prefix="xlsr_demo_run_") as tmp:
    data_dir = _DATA_DIR.value or os.path.join(tmp, "tensorflow_datasets")
    workdir = os.path.join(tmp, "demo")
    cmd = [sys.executable, "-m", "xlsr_jax.main", "--config=experiments/demo.py",
           f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *_EXTRA.value]
    print("+ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if not line.startswith(("I0000", "W0000")):
        sys.stdout.write(line)
    proc.wait()
    wall = time.perf_counter() - start
    output = "".join(lines)
    if proc.returncode != 0:
      raise SystemExit(f"the demo exited with {proc.returncode}; nothing written")
    figures = summarise(workdir, output, wall)
  path = write_results(_OUT.value, {"figures": figures, "overrides": _EXTRA.value}, meta=start_meta,
                       notes="the README's demo command (experiments/demo.py) in a temporary "
                             "workdir; data dir " + ("given" if _DATA_DIR.value else "new, empty"))
  print(json.dumps(figures, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
