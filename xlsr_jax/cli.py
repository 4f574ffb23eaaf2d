"""What every command-line entry point does first (xlsr_jax.main, xlsr_jax.evaluate): --help,
the JAX platforms of this machine, the config with one clear line for a bad one, quiet logs.

A library module, so that the entry points and the downstream run share it without importing
each other.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys

from xlsr_jax.config_loading import ConfigError


def default_platforms() -> None:
  """With libtpu installed (for AOT plans) but no TPU attached, JAX would try and fail to open one:
  pick the platforms this machine has unless JAX_PLATFORMS is set. On a machine with NVIDIA GPUs,
  also the GPU XLA flags (training.devices.GPU_XLA_FLAGS), before any backend starts."""
  gpu = bool(glob.glob("/dev/nvidia[0-9]*"))
  if gpu:
    from xlsr_jax.training.devices import apply_gpu_xla_flags  # pylint: disable=import-outside-toplevel
    apply_gpu_xla_flags()
  if os.environ.get("JAX_PLATFORMS") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  import jax
  jax.config.update("jax_platforms", "cuda,cpu" if gpu else "cpu")


def start_cli(argv: list[str], parser: argparse.ArgumentParser, parse_config_fn):
  """The start of every training CLI: --help (exit 0), platforms, the config (a bad one: one line
  on stderr, exit 2), the other flags, quiet library logs. Returns (config, args) or an exit code."""
  if "-h" in argv or "--help" in argv:
    parser.print_help()
    return 0
  default_platforms()
  try:
    config, rest = parse_config_fn(argv)
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  args = parser.parse_args(rest)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "tensorflow", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  return config, args
