"""Helpers shared by the benchmarks: robust timing statistics, memory, and lock-step worker processes.

A benchmark that compares two programs on a shared, noisy machine runs each in its own process
(separate peak-memory figures, no shared thread pools) and alternates their timed repetitions, so
a burst of load from elsewhere hits both sides rather than one.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

# Model-config fields set to 0 for timing: both sides then run the same deterministic program.
DROPOUT_FIELDS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
                  "feat_quantizer_dropout", "layerdrop")

_REPLY = "@@reply "  # prefix of protocol lines on a worker's stdout; anything else is passed through


def spread(values: Sequence[float]) -> dict[str, float]:
  """Median, quartiles, min and max of repeated measurements."""
  v = np.asarray(values, np.float64)
  q1, median, q3 = np.percentile(v, [25, 50, 75])
  return dict(median=float(median), q1=float(q1), q3=float(q3), min=float(v.min()),
              max=float(v.max()), n=int(v.size))


def rss_mib() -> float:
  """Current resident set size of this process (MiB), from /proc/self/statm."""
  with open("/proc/self/statm") as f:
    pages = int(f.read().split()[1])
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
  """Peak resident set size of this process so far (getrusage ru_maxrss, KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn: Callable[[], Any], count: int) -> float:
  """Wall seconds per call of `fn` (which must block until its work is done), over `count` calls."""
  start = time.perf_counter()
  for _ in range(count):
    fn()
  return (time.perf_counter() - start) / count


def machine_load() -> str:
  """1, 5 and 15 minute load averages, for the record next to each measurement."""
  return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def serve(handlers: dict[str, Callable[..., dict]]) -> None:
  """Worker side: read `{"cmd": name, **kwargs}` lines from stdin, answer each with one JSON line.

  An exception is answered as {"error": text} and ends the worker.
  """
  for line in sys.stdin:
    request = json.loads(line)
    name = request.pop("cmd")
    try:
      reply = handlers[name](**request)
    except Exception as e:  # report to the parent, which raises with the worker's stderr context
      import traceback
      traceback.print_exc()
      reply = {"error": f"{name}: {type(e).__name__}: {e}"}
    sys.stdout.write(_REPLY + json.dumps(reply) + "\n")
    sys.stdout.flush()
    if name == "quit" or "error" in reply:
      return


class Worker:
  """Parent side of `serve`: a child `python -m module args...` answering one command at a time."""

  def __init__(self, name: str, module: str, args: Sequence[str], env: dict[str, str] | None = None):
    self.name = name
    self.proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)

  def call(self, cmd: str, **kwargs) -> dict:
    self.proc.stdin.write(json.dumps(dict(cmd=cmd, **kwargs)) + "\n")
    self.proc.stdin.flush()
    for line in self.proc.stdout:
      if line.startswith(_REPLY):
        reply = json.loads(line[len(_REPLY):])
        if "error" in reply:
          raise RuntimeError(f"worker {self.name!r} failed: {reply['error']} (its traceback is above)")
        return reply
      sys.stderr.write(line)
    raise RuntimeError(f"worker {self.name!r} exited with code {self.proc.wait()} during {cmd!r}")

  def close(self) -> dict:
    reply = self.call("quit")
    self.proc.wait()
    return reply


def fit_fixed_plus_flops(rows: list[dict]) -> tuple[float, float]:
  """Least-squares step_s = fixed + flops / rate over one preset's crops: (fixed s, rate FLOP/s).

  `fixed` is per-step work that does not grow with the crop (AdamW over the parameters, the layer
  scan's stacked parameter and gradient buffers); `rate` is the throughput on the FLOPs that do.
  """
  slope, fixed = np.polyfit([r["flops"] for r in rows], [r["step_s"] for r in rows], 1)
  return float(fixed), float(1.0 / slope)
