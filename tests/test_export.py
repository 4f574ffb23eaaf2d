"""`python -m xlsr_jax.export`: a run's checkpoint params -> model_files (Orbax) or the HF layout."""
import json
import os

import jax
import numpy as np
import pytest

from xlsr_jax import export
from xlsr_jax.checkpoints import hf_layout, model_files
from xlsr_jax.checkpoints import manager as ckpt
from xlsr_jax.config_loading import model_config_from
from xlsr_jax.sharding.mesh import make_mesh
from xlsr_jax.training.state import build_trainer
from xlsr_jax.models.params import unbox
from tests.test_checkpoints import SAMPLES, random_state, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir as the training main leaves it: config.json and checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config()
  with open(workdir / "config.json", "w") as f:
    f.write(config.to_json())
  trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), SAMPLES)
  states = {2: random_state(trainer, seed=2), 4: random_state(trainer, seed=4)}
  with ckpt.CheckpointManager(workdir / "checkpoints", save_every=2, keep=3) as mngr:
    for step, state in states.items():
      mngr.save(step, state, b"position")
  params = {step: jax.device_get(unbox(s.params)) for step, s in states.items()}
  return workdir, config, params


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_export_orbax_latest_loads_with_model_files(run, tmp_path):
  workdir, config, params = run
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'model'}"]) == 0
  loaded, model_config, metadata = model_files.load_model(str(tmp_path / "model"))
  assert_trees_equal(params[4], loaded)
  assert model_config == model_config_from(config)
  assert metadata["step"] == 4
  assert not os.path.exists(tmp_path / "model" / "opt_state")


def test_export_hf_of_given_step_loads_in_transformers(run, tmp_path):
  import torch
  import transformers
  workdir, config, params = run
  out = tmp_path / "hf"
  assert export.main([f"--workdir={workdir}", f"--out={out}", "--format=hf", "--step=2"]) == 0
  model, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  got = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  expected = hf_layout.ours_to_hf(params[2], model_config_from(config))
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  # One mapping checked by hand: our Linear kernel [in, out] is torch's weight [out, in].
  kernel = params[2]["wav2vec2"]["feature_projection"]["projection"]["kernel"]
  np.testing.assert_array_equal(got["wav2vec2.feature_projection.projection.weight"], kernel.T)
  assert not np.array_equal(kernel, params[4]["wav2vec2"]["feature_projection"]["projection"]["kernel"])
  assert isinstance(model.wav2vec2.feature_projection.projection.weight, torch.nn.Parameter)


def test_missing_workdir_config_or_checkpoint_name_the_path(run, tmp_path, capsys):
  workdir, config, _ = run
  missing = tmp_path / "nope"
  assert export.main([f"--workdir={missing}", f"--out={tmp_path / 'o'}"]) == 1
  assert str(missing) in capsys.readouterr().err

  no_config = tmp_path / "no_config"
  no_config.mkdir()
  with pytest.raises(FileNotFoundError, match=str(no_config / "config.json")):
    export.export(str(no_config), str(tmp_path / "o"))

  no_checkpoints = tmp_path / "no_checkpoints"
  no_checkpoints.mkdir()
  (no_checkpoints / "config.json").write_text(config.to_json())
  with pytest.raises(FileNotFoundError, match=str(no_checkpoints / "checkpoints")):
    export.export(str(no_checkpoints), str(tmp_path / "o"))
  (no_checkpoints / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match=str(no_checkpoints / "checkpoints")):
    export.export(str(no_checkpoints), str(tmp_path / "o"))

  with pytest.raises(FileNotFoundError, match=r"step 3 .*available steps: \[2, 4\]"):
    export.export(str(workdir), str(tmp_path / "o"), step=3)
  assert not os.path.exists(tmp_path / "o")


def test_config_that_does_not_match_the_checkpoint_is_an_error(run, tmp_path):
  workdir, config, _ = run
  other = tmp_path / "other"
  other.mkdir()
  os.symlink(workdir / "checkpoints", other / "checkpoints")
  config = json.loads(config.to_json())
  config["model"]["num_hidden_layers"] = 3
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=str(other / "config.json")):
    export.export(str(other), str(tmp_path / "o"))
