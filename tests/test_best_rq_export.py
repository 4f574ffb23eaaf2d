"""A BEST-RQ run's export: the encoder alone, in our format and the Hugging Face Wav2Vec2Model
layout; continued pretraining and the downstream tasks read it as any wav2vec 2.0 encoder."""
import jax
import numpy as np
import pytest
import torch
import transformers

from tests.configs import small_config
from tests.test_checkpoints import SAMPLES, random_state
from xlsr_jax import evaluate, export
from xlsr_jax.checkpoints import manager as ckpt
from xlsr_jax.checkpoints import model_files
from xlsr_jax.models import Wav2Vec2Model
from xlsr_jax.sharding.mesh import make_mesh
from xlsr_jax.training import init_from
from xlsr_jax.training.state import build_trainer
from xlsr_jax.models.params import unbox


def best_rq_config(frontend="cnn"):
  c = small_config()
  c.objective.name = "best_rq"
  c.objective.best_rq.codebook_size = 64
  c.model.frontend = frontend
  return c


def saved_run(workdir, config, seed: int):
  """`workdir` as the training main leaves it: config.json and a random state saved at step 1;
  returns (the trainer, the state)."""
  workdir.mkdir(exist_ok=True)
  (workdir / "config.json").write_text(config.to_json())
  trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), SAMPLES)
  state = random_state(trainer, seed=seed)
  with ckpt.CheckpointManager(workdir / "checkpoints", save_every=1, keep=1) as mngr:
    mngr.save(1, state, b"position")
  return trainer, state


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A BEST-RQ workdir with a checkpoint: (workdir, config, its params)."""
  workdir = tmp_path_factory.mktemp("best_rq_run")
  config = best_rq_config()
  _, state = saved_run(workdir, config, seed=2)
  return workdir, config, jax.device_get(unbox(state.params))


def test_export_keeps_the_encoder_alone_and_hf_wav2vec2model_computes_the_same(run, tmp_path):
  workdir, _, params = run
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'ours'}"]) == 0
  loaded, model_config, _ = model_files.load_model(str(tmp_path / "ours"))
  assert set(loaded) == set(params["wav2vec2"]) and "random_quantizer" not in loaded
  jax.tree.map(np.testing.assert_array_equal, loaded, params["wav2vec2"])

  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'hf'}", "--format=hf"]) == 0
  hf, info = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  wave = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32)
  ours = Wav2Vec2Model(model_config).apply({"params": loaded}, wave)["last_hidden_state"]
  with torch.no_grad():
    ref = hf.eval()(torch.from_numpy(wave)).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)


def test_fbank_frontend_export_refuses_the_hf_layout(tmp_path):
  workdir = tmp_path / "run"
  saved_run(workdir, best_rq_config("fbank"), seed=1)
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'hf'}", "--format=hf"]) == 1
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'ours'}"]) == 0
  loaded, model_config, _ = model_files.load_model(str(tmp_path / "ours"))
  assert model_config.frontend == "fbank" and "feature_extractor" not in loaded
  # The training main's end-of-run export names only what it wrote.
  written = export.export_every_format(str(workdir), str(tmp_path / "export"))
  assert written == [f"{tmp_path / 'export'}/orbax (xlsr_jax)"]
  assert not (tmp_path / "export" / "hf").exists()


def test_best_rq_continues_from_a_wav2vec2_export_with_fresh_heads(run, tmp_path, capsys):
  """init_from a wav2vec 2.0 pretraining export: the encoder loads, wav2vec 2.0's quantizer and
  projections are left out, BEST-RQ's quantizer and heads start fresh."""
  from tests.test_checkpoints import tiny_config
  w2v_dir = tmp_path / "w2v"
  _, w2v_state = saved_run(w2v_dir, tiny_config(), seed=5)
  assert export.main([f"--workdir={w2v_dir}", f"--out={tmp_path / 'w2v_export'}"]) == 0
  config = best_rq_config()
  config.train.init_from = str(tmp_path / "w2v_export")
  best_rq = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), SAMPLES)
  state = init_from.initial_state(best_rq, config)
  out = capsys.readouterr().out
  assert "left out the downstream head(s)" in out and "re-initialised 4 arrays" in out, out
  assert all(name in out for name in ("'quantizer'", "'project_q'", "'project_hid'")), out
  assert "the best_rq objective's ['random_quantizer', 'heads'] start fresh" in out
  got = jax.device_get(unbox(state.params))
  jax.tree.map(np.testing.assert_array_equal, got["wav2vec2"],
               jax.device_get(unbox(w2v_state.params))["wav2vec2"])
  fresh = jax.device_get(unbox(best_rq.create_state().params))
  jax.tree.map(np.testing.assert_array_equal, got["random_quantizer"], fresh["random_quantizer"])


@pytest.mark.slow
def test_downstream_tasks_run_on_a_best_rq_export(run, synthetic_tiny_dir, tmp_path, capsys):
  """The LID probe and CTC fine-tuning take the export as init, unchanged."""
  workdir, _, _ = run
  model = tmp_path / "export"
  assert export.main([f"--workdir={workdir}", f"--out={model}"]) == 0
  common = [f"--config.init={model}", f"--config.data.data_dir={synthetic_tiny_dir}",
            "--config.data.corpus=synthetic_speech/tiny", "--config.data.eval_batch_size=8"]
  assert evaluate.main(["--config=experiments/downstream/lid.py", f"--workdir={tmp_path / 'lid'}",
                        "--config.probe.l2_grid=[1e-2]", *common]) == 0
  out = capsys.readouterr().out
  assert "lid test: accuracy=" in out and "FBANK probe" in out and "MFCC probe" in out
  assert evaluate.main(["--config=experiments/downstream/asr.py", f"--workdir={tmp_path / 'asr'}",
                        "--config.finetune.num_steps=2", "--config.data.batch_size=8",
                        "--config.data.max_sample_size=32000", "--config.train.log_every=1",
                        *common]) == 0
  assert "cer" in capsys.readouterr().out.lower()
