"""Importing benchmark scripts into a test process.

Each script under benchmarks/ is its own program with its own absl flags, and two may share a flag
name (`data_dir`, `out`, ...). One pytest worker can import several of them, which absl refuses
as a duplicate definition depending on which test files the worker ran before. The tests use the
scripts' functions, never their flags, so an earlier script's clashing flag is dropped first.
"""
from __future__ import annotations

import importlib
import re
from types import ModuleType

from absl import flags


def import_benchmark(name: str) -> ModuleType:
  """benchmarks.<name>, whatever other benchmark scripts this process imported before."""
  for _ in range(100):
    try:
      return importlib.import_module(f"benchmarks.{name}")
    except flags.DuplicateFlagError as e:
      clash = re.search(r"flag '([^']+)' is defined twice", str(e))
      if clash is None:
        raise
      delattr(flags.FLAGS, clash.group(1))
  raise RuntimeError(f"benchmarks.{name}: too many clashing flags")
