"""Where a published figure came from: the record every results file under benchmarks/results/ carries.

A results file is JSON `{"meta": provenance(...), ...}`: `meta` says the command line that wrote
it, the commit (and whether the tree had uncommitted changes), the machine, what else was running
(load averages and the busiest other processes at the start), the date (UTC) and free-form notes.
`benchmarks.report` renders the tables in the docs from these files and prints each one's source
line under its table.

Results written before this record existed (the TPU plan JSONs, the text outputs of
`benchmarks.train_step` and friends) have theirs in `benchmarks/results/SOURCES.json`, recorded
afterwards from the git history that added each file; `meta_for` reads either.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SOURCES_INDEX = os.path.join(RESULTS_DIR, "SOURCES.json")
REQUIRED_KEYS = ("command", "commit", "machine", "concurrent", "date")


def _git(*args: str) -> str:
  try:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(RESULTS_DIR)).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def busy_processes(limit: int = 5) -> list[str]:
  """The `limit` other processes with the most CPU time since they started, as 'name (pid) x% CPU'.

  Read from /proc (Linux) so the record says what shared the machine; empty elsewhere.
  """
  out = []
  try:
    hz = os.sysconf("SC_CLK_TCK")
    uptime = float(open("/proc/uptime").read().split()[0])
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
      if int(pid) in (me, os.getppid()):
        continue
      try:
        stat = open(f"/proc/{pid}/stat").read()
      except OSError:
        continue
      name = stat[stat.index("(") + 1:stat.rindex(")")]
      try:  # the program and its first two arguments, e.g. "python -m pytest"
        argv = open(f"/proc/{pid}/cmdline").read().split("\0")
        name = " ".join([os.path.basename(argv[0]), *argv[1:3]])[:60] or name
      except OSError:
        pass
      fields = stat[stat.rindex(")") + 2:].split()
      cpu = (int(fields[11]) + int(fields[12])) / hz  # utime + stime
      age = uptime - int(fields[19]) / hz
      if age > 0 and cpu / age > 0.05:
        out.append((cpu / age, f"{name} ({pid}) {100 * cpu / age:.0f}% CPU"))
  except (OSError, ValueError):
    return []
  return [s for _, s in sorted(out, reverse=True)[:limit]]


def provenance(notes: str = "", argv: list[str] | None = None) -> dict[str, Any]:
  """The `meta` record of a results file written now by this process."""
  argv = sys.argv if argv is None else argv
  module = None
  main = sys.modules.get("__main__")
  if main is not None and getattr(main, "__spec__", None) is not None:
    module = main.__spec__.name
  command = ("python -m " + module if module else "python " + argv[0]) + "".join(
      " " + a for a in argv[1:])
  load = " ".join(f"{x:.2f}" for x in os.getloadavg())
  try:
    import jax
    jax_version = jax.__version__
  except ImportError:
    jax_version = "not installed"
  return {
      "command": command,
      "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
      "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
      "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.system()}; "
                 f"python {platform.python_version()}, jax {jax_version}",
      "concurrent": {"load_avg": load, "busy_processes": busy_processes()},
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "notes": notes,
  }


def write_results(name: str, data: dict[str, Any], notes: str = "",
                  results_dir: str = RESULTS_DIR, meta: dict[str, Any] | None = None) -> str:
  """Write `results_dir/name` as JSON `{"meta": ..., **data}`; returns the path. `meta`: a
  `provenance()` taken when the measurement started (default: now), so the load and busy
  processes are those at its start; `notes` are added to it."""
  path = os.path.join(results_dir, name)
  os.makedirs(results_dir, exist_ok=True)
  meta = dict(meta or provenance())
  meta["notes"] = "; ".join(n for n in (meta.get("notes"), notes) if n)
  with open(path + ".tmp", "w") as f:
    json.dump({"meta": meta, **data}, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return path


def meta_for(name: str, results_dir: str = RESULTS_DIR) -> dict[str, Any] | None:
  """The provenance of results file `name`: its own `meta`, else its SOURCES.json entry, else None."""
  path = os.path.join(results_dir, name)
  if name.endswith(".json") and os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
      return data["meta"]
  index = os.path.join(results_dir, "SOURCES.json")
  if os.path.exists(index):
    with open(index) as f:
      return json.load(f).get(name)
  return None
