"""Config loading: overrides, and errors that name the bad key and the nearest valid ones."""
import pytest

from xlsr_jax import main
from xlsr_jax.config_loading import ConfigError

DEMO = "--config=experiments/demo.py"


def test_overrides_are_parsed_into_the_right_types():
  config, rest = main.parse_config([DEMO, "--config.optimizer.peak_lr=1e-4", "--config.train.num_steps",
                                    "7", "--config.objective.require_same_masks=false",
                                    "--config.model.num_hidden_layers=3", "--workdir=/tmp/x"])
  assert config.optimizer.peak_lr == 1e-4 and config.train.num_steps == 7
  assert config.objective.require_same_masks is False and rest == ["--workdir=/tmp/x"]
  assert config.model.num_hidden_layers == 3


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.peak_lrr=1e-4", r"unknown key 'peak_lrr' in optimizer.*nearest valid keys: peak_lr"),
    ("--config.optimiser.peak_lr=1e-4", r"unknown key 'optimiser'.*nearest valid keys: optimizer"),
    ("--config.train.num_steps=ten", r"train.num_steps=ten: expected an int"),
    ("--config.objective.require_same_masks=maybe", r"expected a bool"),
    ("--config.model.hiden_size=12", r"model.hiden_size is not a model field.*hidden_size"),
    ("--config.model.preset=xlsr_3b", r"xlsr_3b.*valid presets"),
])
def test_bad_overrides_stop_with_a_message_naming_the_key(override, message):
  with pytest.raises(ConfigError, match=message):
    main.parse_config([DEMO, override])


def test_main_reports_config_errors_and_exits_2(capsys):
  assert main.main([DEMO, "--config.train.num_stepz=3", "--workdir=/tmp/x"]) == 2
  assert "num_steps" in capsys.readouterr().err


def test_unbuilt_synthetic_source_names_its_build_command(tmp_path, capsys):
  code = main.main([DEMO, f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'empty'}",
                    "--config.data.sources=[['synthetic_speech/tiny', None]]",
                    "--config.data.build_if_missing=false"])
  err = capsys.readouterr().err
  assert code == 2 and "synthetic_speech/tiny is not built" in err
  assert "--config=tiny`" in err and "build_if_missing=true" in err
  assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.tfrecord*"))


@pytest.mark.parametrize("name", ["demo", "xlsr_300m", "xlsr_1b", "xlsr_2b"])
def test_experiment_configs_validate(name):
  config, _ = main.parse_config([f"--config=experiments/{name}.py"])
  assert config.model.preset in ("tiny", name)
