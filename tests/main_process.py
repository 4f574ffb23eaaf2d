"""`python -m xlsr_jax.main` as a subprocess, for the end-to-end tests (test_main_*, test_faults)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_main(args: list[str], devices: int, llvm_o0: bool, env_extra: dict | None = None,
               **popen) -> subprocess.Popen:
  """The CLI on `devices` fake CPU devices, stdout and stderr merged into one text pipe. llvm_o0:
  compile at LLVM -O0 (as conftest) for a run that mostly compiles (a few steps), not for one that
  mostly runs."""
  flags = f"--xla_force_host_platform_device_count={devices}"
  if llvm_o0:
    flags += " --xla_backend_optimization_level=0"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=flags,
             **(env_extra or {}))
  return subprocess.Popen([sys.executable, "-m", "xlsr_jax.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def overrides(data_dir, **extra):
  """A fast tiny bucketed run: crops of 1 or 2 s (one bucket per step), 8 rows, small masks and
  negatives."""
  values = {
      "data.data_dir": data_dir, "data.sources": "[['synthetic_speech/tiny', None]]",
      "data.max_sample_size": 32000, "data.min_sample_size": 16000, "data.batch_seconds": 8.0,
      "data.bucket_seconds": "[1.0,2.0]", "data.bucket_mode": "crop",
      "data.build_if_missing": "false", "objective.mask_length": 5, "objective.num_negatives": 10,
      "train.eval_every": 0, "train.log_every": 1, "train.checkpoint_every": 4,
  }
  values.update(extra)
  return [f"--config.{k}={v}" for k, v in values.items()]


def run_main(args, devices=8, env_extra=None, llvm_o0=False, **popen):
  """`python -m xlsr_jax.main --config=experiments/demo.py ARGS`."""
  return start_main(["--config=experiments/demo.py", *args], devices, llvm_o0, env_extra, **popen)


def final_params(workdir):
  from xlsr_jax import export
  params, _, step = export.load_params(workdir)
  return step, jax.tree.map(np.asarray, params)


def step_losses(output):
  return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"step (\d+)/\d+ loss=([\d.e+-]+)", output)}
