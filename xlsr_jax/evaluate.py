"""`python -m xlsr_jax.evaluate --config=... --config.init=... --workdir=DIR`: the downstream
evaluation command at its usual path. The code is in `xlsr_jax.downstream`: `evaluate` (the run
and this CLI), `task_setup` (config, data, encoder, task model), `tasks` (one object per task:
labels, model, loss, eval step, scores, export), `scoring` (test split, export, report).
"""
import sys

from xlsr_jax.downstream.evaluation_run import main, run  # noqa: F401  (the public entry points)
from xlsr_jax.downstream.task_setup import TaskError, parse_config  # noqa: F401

if __name__ == "__main__":
  sys.exit(main())
