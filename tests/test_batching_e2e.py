"""benchmarks.batching_e2e: the measured rate leaves out each shape's first step (fast); a tiny corpus
written as WAVs, built by audio_manifest and trained on by the real loop, old and bucketed (slow)."""
import numpy as np
import pytest

from tests.benchmark_import import import_benchmark

batching_e2e = import_benchmark("batching_e2e")


def _row(step, crop_seconds, real, cpu, padding=0.0):
  return {"step": step, f"bucket_share/{crop_seconds:g}s": 1.0, "real_audio_seconds_per_step": real,
          "cpu_seconds_per_step": cpu, "steps_per_second": 1.0 / cpu, "padding_fraction": padding}


def test_measured_rate_leaves_out_the_first_step_of_each_shape():
  history = [_row(1, 2, 8.0, 30.0), _row(2, 2, 8.0, 1.0), _row(3, 4, 12.0, 40.0),
             _row(4, 4, 12.0, 2.0), _row(5, 2, 6.0, 1.0), {"step": 5, "eval_loss": 1.0}]
  m = batching_e2e.measured_rate(history)
  assert (m["steps"], m["first_steps_left_out"]) == (3, 2)
  assert m["rate"] == pytest.approx(26.0 / 4.0)
  assert m["left_out_cpu_seconds"] == pytest.approx(70.0)
  fixed = [_row(s, 20, 5.0, 2.0, padding=0.75) for s in (1, 2, 3)]
  m = batching_e2e.measured_rate(fixed)
  assert m["steps"] == 2 and m["padding"] == pytest.approx(0.75) and m["rate"] == 2.5
  with pytest.raises(ValueError, match="no step left"):
    batching_e2e.measured_rate(fixed[:1])


def test_run_config_selects_the_two_batchings(tmp_path):
  from xlsr_jax.config_loading import model_config_from
  from xlsr_jax.training import config_checks
  # 4 s and up: 100 negatives need more frames than a 2 s bucket's 99 (validation's rule; the
  # benchmark's runs go through the loop's Python API, as benchmarks.batching's model times them).
  kw = dict(batch_seconds=64.0, bucket_seconds=[4.0, 8.0], crop_samples=320_000, min_samples=32_000)
  old = batching_e2e.run_config("tiny", str(tmp_path), "audio_manifest/x", "old", 5, **kw)
  crop = batching_e2e.run_config("tiny", str(tmp_path), "audio_manifest/x", "crop", 5, **kw)
  assert old.data.bucket_seconds == [] and old.objective.require_same_masks
  assert crop.data.bucket_seconds == [4.0, 8.0] and not crop.objective.require_same_masks
  for c in (old, crop):
    assert c.train.log_every == 1 and c.train.eval_every == 0 and c.model.hidden_dropout == 0.0
    config_checks.validate(c, model_config_from(c))
  with pytest.raises(ValueError, match="batching_mode"):
    batching_e2e.run_config("tiny", str(tmp_path), "x", "pad", 5, **kw)


@pytest.mark.slow  # four compiles of the tiny step (two runs of the loop, two model timings)
def test_tiny_corpus_end_to_end_beside_the_model(tmp_path):
  import jax
  from data_pipelines import buckets as buckets_lib
  from xlsr_jax.sharding import mesh as mesh_lib
  lengths = np.array([4_000, 5_000, 6_000, 7_000, 9_000, 12_000] * 3)  # 0.25-0.75 s
  batching_e2e.write_corpus(lengths, str(tmp_path / "manual"))
  corpus = batching_e2e.build_corpus(str(tmp_path / "manual"), str(tmp_path / "tfds"), "tiny")
  settings = dict(batch_seconds=2.0, bucket_seconds=[0.25, 0.5], crop_samples=12_000,
                  min_samples=4_000)
  original = mesh_lib.make_mesh
  mesh_lib.make_mesh = lambda *a, **k: original(*a, **{**k, "devices": jax.devices()[:1]})
  try:
    measured = {mode: batching_e2e.run_e2e(
        batching_e2e.run_config("tiny", str(tmp_path / "tfds"), corpus, mode, 4, **settings),
        str(tmp_path / mode)) for mode in ("old", "crop")}
  finally:
    mesh_lib.make_mesh = original
  assert measured["old"]["first_steps_left_out"] == 1 and measured["old"]["steps"] == 3
  assert measured["old"]["padding"] > 0.2 and measured["crop"]["padding"] == 0.0
  assert measured["crop"]["steps"] + measured["crop"]["first_steps_left_out"] == 4
  for m in measured.values():
    assert m["rate"] > 0 and m["run_cpu_seconds"] > m["cpu_seconds"]
  spec = buckets_lib.make_spec(settings["bucket_seconds"], settings["batch_seconds"],
                               min_sample_size=4_000)
  timings = {}
  model = batching_e2e.model_prediction(lengths, spec, 12_000, 4_000, 2.0, "tiny", 1, timings)
  assert set(model) == {"old", "crop"} and len(timings) == 3  # old shape + both buckets
  assert model["crop"]["padding"] == 0.0 and model["old"]["rate"] > 0
