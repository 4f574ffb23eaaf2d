"""`python -m xlsr_jax.main` as a subprocess, for the end-to-end tests (test_main, test_faults)."""
from __future__ import annotations

import os
import subprocess
import sys

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
