"""The train loop in process (fast tier): a bucketed run on the toy corpus writes its metrics, bucket
plan and checkpoints, and a second call resumes from them instead of starting again."""
import json
import os

import numpy as np
import pytest

from tests.configs import small_config
from xlsr_jax.training.loop import train_and_evaluate


def toy_config(data_dir: str, num_steps: int):
  c = small_config(num_steps=num_steps, log_every=2, eval_every=0, checkpoint_every=3)
  c.data.update(data_dir=data_dir, sources=[["toy_speech/alpha", None], ["toy_speech/beta", None]],
                bucket_seconds=[0.25, 0.5], bucket_mode="crop", max_sample_size=8000,
                min_sample_size=4000, batch_seconds=4.0, prefetch_batches=1)
  c.mesh.data = 2  # 2 of the 8 fake devices: rows split over a data axis
  return c


@pytest.fixture(scope="module")
def run(toy_corpus_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("loop"))
  import jax
  from xlsr_jax.sharding import mesh as mesh_lib
  config = toy_config(toy_corpus_dir, num_steps=4)
  devices = jax.devices()[:2]
  original = mesh_lib.make_mesh
  mesh_lib.make_mesh = lambda *a, **k: original(*a, **{**k, "devices": devices})
  try:
    first = train_and_evaluate(config, workdir)
    second = train_and_evaluate(toy_config(toy_corpus_dir, num_steps=6), workdir)
  finally:
    mesh_lib.make_mesh = original
  return workdir, first, second


def test_run_logs_what_each_step_computed(run):
  workdir, first, _ = run
  logged = [m for m in first["history"] if "loss" in m]
  assert [m["step"] for m in logged] == [2, 4]
  for m in logged:
    assert np.isfinite(m["loss"]) and m["padding_fraction"] == 0.0  # crop mode: no padding
    assert 0.2 < m["masked_fraction"] < 0.8
    assert m["real_audio_seconds_per_step"] == pytest.approx(4.0, rel=0.01)
    shares = [v for k, v in m.items() if k.startswith("bucket_share/")]
    assert sum(shares) == pytest.approx(1.0)
  with open(os.path.join(workdir, "bucket_plan.json")) as f:
    plan = json.load(f)
  assert [b["seconds"] for b in plan["buckets"]] == [0.25, 0.5]
  assert [b["rows"] for b in plan["buckets"]] == [16, 8]
  assert plan["dropped_utterances"] > 0  # toy utterances under 4,000 samples, counted


def test_second_call_resumes_from_the_checkpoint(run):
  workdir, first, second = run
  assert int(first["state"].step) == 4 and int(second["state"].step) == 6
  assert [m["step"] for m in second["history"] if "loss" in m] == [6]
  assert sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
                if p.isdigit()) == [3, 4, 6]
