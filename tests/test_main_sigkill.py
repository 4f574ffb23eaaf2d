"""`python -m xlsr_jax.main` killed with SIGKILL mid-run, then restarted, reaches the result of the
uninterrupted run (its own file so the test runner can place it beside the other long runs)."""
import os
import random
import re
import signal

import jax
import numpy as np
import pytest

from tests.main_process import final_params, overrides, run_main, step_losses


@pytest.fixture(scope="module")
def data_dir(synthetic_tiny_dir):
  return synthetic_tiny_dir


@pytest.mark.slow
def test_sigkill_then_restart_reaches_the_uninterrupted_result(data_dir, tmp_path):
  steps = 16
  cache = tmp_path / "jit_cache"  # the restarts load the compiled step from here
  args = overrides(data_dir, **{"train.num_steps": steps, "train.compilation_cache_dir": cache})
  full = run_main([f"--workdir={tmp_path / 'full'}", "--no_export", *args])
  full_out = full.communicate(timeout=600)[0]
  assert full.returncode == 0, full_out[-3000:]

  # Kill at a random step once some checkpoint is finalised (saves are asynchronous: one still
  # being written when the process dies is discarded, and the restart uses the previous one).
  kill_at = random.Random(os.getpid()).randint(5, 10)
  killed = run_main([f"--workdir={tmp_path / 'killed'}", "--no_export", *args])
  checkpoints = tmp_path / "killed" / "checkpoints"
  seen, done_at = "", None
  for line in killed.stdout:
    seen += line
    match = re.search(rf"step (\d+)/{steps} ", line)
    if match and int(match.group(1)) >= kill_at and any(
        p.name.isdigit() for p in checkpoints.glob("*")):
      done_at = int(match.group(1))
      killed.send_signal(signal.SIGKILL)
      break
  assert done_at is not None and done_at < steps, seen[-3000:]
  killed.wait(timeout=60)
  assert killed.returncode == -signal.SIGKILL, seen[-3000:]
  resumed = run_main([f"--workdir={tmp_path / 'killed'}", "--no_export", *args])
  out = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, out[-3000:]
  assert re.search(r"resumed from step (4|8|12) ", out), out[-3000:]

  full_losses, resumed_losses = step_losses(full_out), step_losses(out)
  for step, loss in resumed_losses.items():
    assert abs(loss - full_losses[step]) <= 1e-6 * max(1.0, abs(loss)), (step, loss, full_losses[step])
  step_a, params_a = final_params(str(tmp_path / "full"))
  step_b, params_b = final_params(str(tmp_path / "killed"))
  assert step_a == step_b == steps
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), params_a, params_b)
  assert list(cache.glob("jit_step_fn-*")), sorted(p.name for p in cache.iterdir())
