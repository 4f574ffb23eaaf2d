"""How long each test tier takes here: benchmarks/results/test_tiers.json.

  python -m benchmarks.test_tiers                 # fast tier, then the full tier (~17 min on 2 cores)
  python -m benchmarks.test_tiers --tiers=fast

Runs the README's test commands (`bash scripts/test.sh`, `bash scripts/test.sh --full`) and records
each one's pytest summary line and wall time (the installs of an existing .venv included). Run it
on an otherwise idle machine: the record says what else was running at the start.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.provenance import provenance, write_results

_TIERS = flags.DEFINE_list("tiers", ["fast", "full"], "Tiers to time: fast, full.")
_OUT = flags.DEFINE_string("out", "test_tiers.json", "Results file name under benchmarks/results/.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"fast": ["bash", "scripts/test.sh"], "full": ["bash", "scripts/test.sh", "--full"]}


def summary_line(output: str) -> str:
  """pytest's final '== N passed, M skipped in S s ==' line, without the '=' padding."""
  lines = [l.strip("= ") for l in output.splitlines() if re.search(r"\d+ (passed|failed)", l)]
  return lines[-1] if lines else "no pytest summary line"


def slowest(output: str, count: int = 15) -> list[str]:
  """The first `count` lines of pytest's "slowest durations" section ('12.34s call tests/...')."""
  lines = output.splitlines()
  start = next((i for i, l in enumerate(lines) if "slowest" in l and "durations" in l), None)
  if start is None:
    return []
  rows = [l.strip() for l in lines[start + 1:] if re.match(r"\s*[\d.]+s (call|setup|teardown)", l)]
  return rows[:count]


def failed(output: str) -> list[str]:
  """pytest's 'FAILED tests/...' summary lines."""
  return [l.strip() for l in output.splitlines() if l.startswith(("FAILED ", "ERROR "))]


def main(argv) -> None:
  del argv
  start_meta = provenance()  # the machine's load when the run starts
  tiers = []
  for tier in _TIERS.value:
    cmd = COMMANDS[tier]
    print("+ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = summary_line(proc.stdout)
    print(f"{tier}: exit {proc.returncode}, {summary}, {seconds / 60:.1f} min", flush=True)
    tiers.append(dict(tier=tier, command=" ".join(cmd), exit_code=proc.returncode,
                      summary=summary, seconds=seconds, slowest=slowest(proc.stdout),
                      failed=failed(proc.stdout)))
  print(f"wrote {write_results(_OUT.value, {'tiers': tiers}, meta=start_meta)}")
  if any(t["exit_code"] for t in tiers):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
