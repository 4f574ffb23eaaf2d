"""Two jax.distributed processes of `python -m xlsr_jax.main` train, save and restore."""
import socket

import pytest

from tests.main_process import final_params, overrides, run_main


@pytest.fixture(scope="module")
def data_dir(synthetic_tiny_dir):
  return synthetic_tiny_dir


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_save_and_restore(data_dir, tmp_path):
  workdir = tmp_path / "multi"

  def launch(num_steps):
    port = _free_port()
    procs = []
    for pid in range(2):
      args = [f"--workdir={workdir}", "--no_export", *overrides(data_dir, **{
          "train.num_steps": num_steps, "train.checkpoint_every": 2,
          "distributed.enabled": "true", "distributed.coordinator_address": f"127.0.0.1:{port}",
          "distributed.num_processes": 2, "distributed.process_id": pid})]
      procs.append(run_main(args, devices=4, llvm_o0=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
      assert p.returncode == 0, out[-3000:]
    return outs

  first = launch(4)
  assert "step 4/4" in first[0] and "step 4/4" not in first[1]  # logging from process 0 only
  second = launch(6)
  assert all("resumed from step 4" in out for out in second), second[0][-2000:]
  assert "step 6/6" in second[0]
  step, _ = final_params(str(workdir))
  assert step == 6
