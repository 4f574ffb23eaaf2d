"""Pretraining entry point.

  python -m xlsr_jax.main --config=experiments/demo.py --workdir=/tmp/xlsr_demo [--config.a.b=v ...]

Loads the config, applies overrides, validates every key against the defaults (a misspelled key
stops here, naming the nearest valid ones) and every value against the ranges and relations of
xlsr_jax/training/config_checks.py (one line, exit 2), initialises jax.distributed when asked, takes
the workdir's lock (one run per workdir), then trains. The demo also exports the final encoder
(Orbax and Hugging Face layouts) into <workdir>/export. Exit codes: 0 done (or stopped by SIGTERM /
a first Ctrl-C after saving; also a finished run run again: nothing to train, nothing changed), 1 a
failed save, a checkpoint that could not be read (not damage: nothing deleted) or too many
non-finite steps, 2 a refused config, workdir or resume (every checkpoint damaged, train.num_steps
below the latest step, another batch stream), 130 a second Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from xlsr_jax.cli import start_cli
from xlsr_jax.config_loading import ConfigError, load_validated, model_config_from, split_argv


def parse_config(argv: list[str]):
  """(config, remaining args) from --config=... and --config.a.b=v overrides; every key and value
  checked (types against the defaults, ranges and relations by `training.config_checks`)."""
  from xlsr_jax.training import config_checks
  from xlsr_jax.training.config_defaults import get_default_config
  path, overrides, rest = split_argv(argv)
  config = load_validated(path, overrides, get_default_config(), "--config=experiments/<name>.py")
  config_checks.validate(config, model_config_from(config))
  return config, rest


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m xlsr_jax.main", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", metavar="FILE", help="experiment config file (required), e.g. "
                      "experiments/demo.py; then --config.<section>.<key>=VALUE overrides any key "
                      "of xlsr_jax/training/config_defaults.py")
  parser.add_argument("--workdir", required=True, help="run directory: config.json, checkpoints/, "
                      "tensorboard/, history.json; re-running the same command resumes")
  parser.add_argument("--no_export", action="store_true", help="skip the export after training")
  return parser


def initialize_distributed(config) -> None:
  """jax.distributed.initialize from config values, or from the environment (TPU pods: no args)."""
  import jax
  d = config.distributed
  if not d.enabled:
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                  process_id=d.process_id)
  jax.distributed.initialize(**kwargs)


def new_workdir_command(argv: list[str], workdir: str) -> str:
  """This command line with another --workdir (a new run beside the refused one)."""
  new = f"{os.path.abspath(workdir).rstrip(os.sep)}_new"
  args, skip = [], False
  for arg in argv:
    if not skip and not arg.startswith("--workdir"):
      args.append(arg)
    skip = arg == "--workdir"  # its value is the next argument
  return shlex.join(["python", "-m", "xlsr_jax.main", *args, f"--workdir={new}"])


def _see(errors_log: str) -> str:
  """A pointer to the run's errors.log for its last line, when background errors were written."""
  return f" (background errors: {errors_log})" if os.path.exists(errors_log) else ""


def main(argv: list[str] | None = None) -> int:
  cli = argv is None  # a process of its own: background errors stay in the log while it exits
  argv = sys.argv[1:] if argv is None else argv
  started = start_cli(argv, make_parser(), parse_config)
  if isinstance(started, int):
    return started
  config, args = started
  from xlsr_jax.training import config_checks, workdir_lock
  try:
    workdir_lock.check_workdir(args.workdir)
  except workdir_lock.WorkdirUnusable as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  initialize_distributed(config)
  import jax
  from xlsr_jax.checkpoints.manager import (CheckpointMismatchError, CheckpointReadError,
                                            CheckpointSaveError, NoIntactCheckpointError)
  from xlsr_jax.training import run
  from xlsr_jax.training.loop import InputStreamChanged
  errors_log = os.path.join(os.path.abspath(args.workdir), run.ERRORS_LOG)
  try:
    config_checks.validate_devices(config, jax.device_count(), jax.process_count())
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  if config.train.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.train.compilation_cache_dir))
  from xlsr_jax.training.loop import train_and_evaluate
  try:
    with workdir_lock.hold(args.workdir, enabled=jax.process_index() == 0), \
        run.background_errors_to_log(os.path.abspath(args.workdir), keep=cli):
      result = train_and_evaluate(config, args.workdir)
      if not result["trained"]:
        return 0  # already at train.num_steps: said so, nothing changed
      if not args.no_export and jax.process_index() == 0:
        from xlsr_jax.checkpoints import run_export
        export_dir = os.path.join(result["workdir"], "export")
        written = run_export.export_every_format(result["workdir"], export_dir)
        print(f"export: {' and '.join(written) or 'nothing written'}")
  except InputStreamChanged as e:
    print(f"error: {e}, or start a new run in another workdir: "
          f"{new_workdir_command(argv, args.workdir)}", file=sys.stderr)
    return 2
  except (ConfigError, workdir_lock.WorkdirLocked, workdir_lock.WorkdirUnusable,
          CheckpointMismatchError, NoIntactCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)  # refused before anything in the workdir changed
    return 2
  except CheckpointSaveError as e:
    print(f"error: {e}{_see(errors_log)}", file=sys.stderr)
    return 1
  except (CheckpointReadError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"aborted (second Ctrl-C): the steps since the last checkpoint are lost"
          f"{_see(errors_log)}", file=sys.stderr)
    return 130
  print(f"TensorBoard logs: {result['tensorboard']}  (tensorboard --logdir {result['tensorboard']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
