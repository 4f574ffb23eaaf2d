"""Fault injection, table-driven (issue 16): each case names a fault and the behaviour it must get.

One tiny pretraining run (two segments: steps 1-4, then a resume to step 8, checkpoints at 4 and
8) is shared by every case that needs a workdir; each case works on its own copy. Cases that need
a training process of their own (Ctrl-C, a failing save) are marked slow.
"""
import gc
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess

import numpy as np
import pytest

from tests.main_process import start_main


@pytest.fixture(scope="module")
def data_dir(synthetic_tiny_dir):
  return synthetic_tiny_dir


def run_args(data_dir, workdir, **extra):
  """A tiny run: 1 s crops, 8 per batch (divides over 1 or 8 devices), checkpoints every 4 steps."""
  values = {
      "data.data_dir": data_dir, "data.sources": "[['synthetic_speech/tiny', None]]",
      "data.max_sample_size": 16000, "data.min_sample_size": 16000, "data.batch_seconds": 8.0,
      "data.bucket_seconds": "[]",  # fixed 1 s crops (the demo's buckets are longer)
      "data.build_if_missing": "false", "objective.mask_length": 5, "objective.num_negatives": 10,
      "train.eval_every": 0, "train.log_every": 2, "train.checkpoint_every": 4, "train.num_steps": 8,
  }
  values.update(extra)
  return ["--config=experiments/demo.py", f"--workdir={workdir}", "--no_export",
          *[f"--config.{k}={v}" for k, v in values.items()]]


def launch(args, devices=1, env_extra=None, **popen):
  """`python -m xlsr_jax.main` with LLVM at -O0 (as conftest: these short runs mostly compile)."""
  return start_main(args, devices, llvm_o0=True, env_extra=env_extra, **popen)


def finish(proc, timeout=600):
  out = proc.communicate(timeout=timeout)[0]
  return proc.returncode, out


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """The shared run's workdir: 4 steps, then resumed to 8 (history.json must span both)."""
  workdir = tmp_path_factory.mktemp("run") / "w"
  for steps in (4, 8):
    code, out = finish(launch(run_args(data_dir, workdir, **{"train.num_steps": steps})))
    assert code == 0, out[-3000:]
  return workdir


def copy_run(run, tmp_path):
  dst = tmp_path / "w"
  shutil.copytree(run, dst)
  return dst


def tree_digest(directory) -> dict:
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def assert_unchanged(workdir, before: dict) -> None:
  """The workdir holds exactly the files of `before` (tree_digest), byte for byte; the message
  shows errors.log when a run wrote one."""
  errors_log = workdir / "errors.log"
  assert tree_digest(workdir) == before, errors_log.exists() and errors_log.read_text()[-3000:]


def largest_array_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "params")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f) + os.sep or r.endswith(os.sep + "d")]
  return max(files, key=os.path.getsize)


def damage(path, offset_fraction=0.5, size=4096):
  """Overwrites `size` bytes in the middle of a file with other bytes (length unchanged)."""
  length = os.path.getsize(path)
  offset = int(length * offset_fraction)
  with open(path, "r+b") as f:
    f.seek(offset)
    old = f.read(min(size, length - offset))
    f.seek(offset)
    f.write(bytes((b + 1) % 256 for b in old))


def main_in_process(argv, capsys):
  """main.main in this process. Earlier tests' garbage is collected first: an unraisable error of
  theirs (sys.unraisablehook is process-wide) must not land in this run's errors.log."""
  from xlsr_jax import main
  gc.collect()
  code = main.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# Config values: each is refused at start-up, before anything is created, with one named line.

BAD_VALUES = [  # (overrides, text the one-line error must contain)
    ({"data.max_sample_size": 300, "data.min_sample_size": 300}, "receptive field"),
    ({"optimizer.peak_lr": -1e-3}, "optimizer.peak_lr=-0.001"),
    ({"data.min_sample_size": 32000}, "data.min_sample_size <= data.max_sample_size"),
    ({"objective.num_negatives": 60}, "objective.num_negatives=60"),
    ({"objective.mask_prob": 1.5}, "objective.mask_prob=1.5"),
    ({"data.alpha": -1}, "data.alpha=-1"),
    ({"data.batch_seconds": 0}, "data.batch_seconds=0"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every=0"),
    ({"train.grad_accum_steps": 3}, "train.grad_accum_steps=3"),
    ({"train.log_every": 0}, "train.log_every=0"),
    ({"objective.mask_length": 60}, "mask span fits"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "at most one mesh axis"),
    ({"model.layerdrop": 1.0}, "model.layerdrop=1.0"),
    ({"objective.gumbel_end": 3.0}, "gumbel_end <= objective.gumbel_start"),
    ({"mesh.data": 3}, "mesh"),  # 3 does not divide the 8 devices: a device row
    ({"sharding.logical_axis_rules": "[['embed', 'fsdpp']]"}, "sharding.logical_axis_rules"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_config_value_is_one_named_line_exit_2_nothing_written(overrides, message, data_dir,
                                                                    tmp_path, capsys):
  workdir = tmp_path / "never"
  code, out, err = main_in_process(run_args(data_dir, workdir, **overrides), capsys)
  assert code == 2, (out, err)
  assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  assert not workdir.exists()


def test_bad_downstream_value_is_one_named_line_exit_2(tmp_path, capsys):
  from xlsr_jax import evaluate
  code = evaluate.main(["--config=experiments/downstream/lid.py", "--config.train.log_every=0",
                        f"--workdir={tmp_path / 'never'}"])
  err = capsys.readouterr().err
  assert code == 2 and "train.log_every=0" in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "never").exists()


def test_every_non_boolean_default_key_has_a_validation_row():
  from xlsr_jax.training import config_checks
  from xlsr_jax.training.config_defaults import get_default_config
  covered = {k for rule in config_checks.RULES + config_checks.DEVICE_RULES for k in rule.keys}

  def leaves(c, prefix=""):
    for key, value in c.items():
      if hasattr(value, "items") and key != "model":
        yield from leaves(value, f"{prefix}{key}.")
      elif not hasattr(value, "items"):
        yield f"{prefix}{key}", value
  missing = [k for k, v in leaves(get_default_config())
             if not isinstance(v, bool) and k not in covered and k not in config_checks.UNCHECKED]
  assert not missing


@pytest.mark.parametrize("module", ["main", "evaluate", "export", "convert", "plan"])
def test_help_prints_the_usage_of_every_command(module, capsys):
  import importlib
  entry = importlib.import_module(f"xlsr_jax.{module}").main
  try:
    code = entry(["--help"])
  except SystemExit as e:  # argparse's own --help
    code = e.code
  out = capsys.readouterr().out
  assert code == 0 and out.startswith("usage:"), out[:300]
  assert "--workdir" in out or "--input" in out or "--topology" in out


# ---------------------------------------------------------------------------------------------
# Checkpoints: damaged bytes, non-finite values, export of a damaged step.

def _trainer_target(workdir):
  from xlsr_jax.checkpoints.manager import restore_target
  from xlsr_jax.export import read_run_config
  from xlsr_jax.training import loop
  from xlsr_jax.training.state import build_trainer
  config = read_run_config(str(workdir))
  trainer = build_trainer(config, loop.make_mesh_from_config(config), config.data.max_sample_size)
  return restore_target(trainer.abstract_state, trainer.state_sharding)


def test_shared_run_kept_metrics_across_the_resume_and_checksums_in_every_step(run):
  with open(run / "history.json") as f:
    assert [m["step"] for m in json.load(f)] == [2, 4, 6, 8]
  for step in ("4", "8"):
    record = json.loads((run / "checkpoints" / step / "checksums.json").read_text())
    assert any(name.startswith("params/") for name in record["files"])
  assert not (run / "run.lock").exists()  # released at exit


def test_damaged_array_bytes_skip_the_step_naming_the_file(run, tmp_path, caplog):
  from xlsr_jax.checkpoints.manager import CheckpointManager
  workdir = copy_run(run, tmp_path)
  bad_file = largest_array_file(workdir / "checkpoints" / "8")
  damage(bad_file)
  target = _trainer_target(workdir)
  with caplog.at_level(logging.WARNING), CheckpointManager(
      workdir / "checkpoints", save_every=4, keep=3) as manager:
    state, _ = manager.restore_latest(target)
  assert int(state.step) == 4
  assert any(bad_file in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records), \
      [r.getMessage() for r in caplog.records]


def test_nonfinite_parameters_are_refused_like_damage(run, tmp_path, caplog):
  import jax
  from xlsr_jax.checkpoints.manager import CheckpointManager
  workdir = copy_run(run, tmp_path)
  target = _trainer_target(workdir)
  with CheckpointManager(workdir / "checkpoints", save_every=4, keep=5, async_save=False) as manager:
    state, data_state = manager.restore_latest(target)
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[0] = leaves[0] * np.nan
    manager.save(12, state.replace(params=jax.tree.unflatten(treedef, leaves)), data_state, force=True)
  with caplog.at_level(logging.WARNING), CheckpointManager(
      workdir / "checkpoints", save_every=4, keep=5) as manager:
    state, _ = manager.restore_latest(target)
  assert int(state.step) == 8
  assert any("not finite" in r.getMessage() for r in caplog.records)


def test_export_of_a_damaged_step_fails_naming_the_file(run, tmp_path, capsys):
  from xlsr_jax import export
  workdir = copy_run(run, tmp_path)
  bad_file = largest_array_file(workdir / "checkpoints" / "8")
  damage(bad_file, 0.1)
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'out'}"]) == 1
  assert bad_file in capsys.readouterr().err
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'out'}", "--step=4"]) == 0


def _unreadable(monkeypatch, bad_path):
  """Every open() of `bad_path` fails with EIO (a storage hiccup; root ignores chmod)."""
  import builtins
  import errno
  real_open = builtins.open

  def flaky_open(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(bad_path):
      raise OSError(errno.EIO, "Input/output error", os.fspath(file))
    return real_open(file, *args, **kwargs)
  monkeypatch.setattr(builtins, "open", flaky_open)


def test_read_error_on_the_newest_step_stops_naming_the_file_and_keeps_the_step(
    run, data_dir, tmp_path, capsys, monkeypatch):
  from xlsr_jax.checkpoints.manager import CheckpointManager
  workdir = copy_run(run, tmp_path)
  before = tree_digest(workdir)
  bad_file = largest_array_file(workdir / "checkpoints" / "8")
  with monkeypatch.context() as patch:
    _unreadable(patch, bad_file)
    code, out, err = main_in_process(run_args(data_dir, workdir, **{"train.num_steps": 12}), capsys)
  assert code == 1 and bad_file in err and "Input/output error" in err, err[-3000:]
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-3000:]
  assert "trying the previous" not in out + err  # no fall back to step 4
  assert_unchanged(workdir, before)  # step 8 kept as it was, nothing replaced
  with CheckpointManager(workdir / "checkpoints", save_every=4, keep=3) as manager:
    state, _ = manager.restore_latest(_trainer_target(workdir))  # readable again: step 8
  assert int(state.step) == 8


def test_an_unreadable_item_directory_is_a_read_error_not_a_missing_file(run, tmp_path, monkeypatch):
  from xlsr_jax.checkpoints import integrity
  step_dir = copy_run(run, tmp_path) / "checkpoints" / "8"
  real_stat = os.stat

  def stat(path, *args, **kwargs):  # params/ without permission: what is under it cannot be checked
    if os.fspath(path).startswith(str(step_dir / "params") + os.sep):
      raise PermissionError(13, "Permission denied", os.fspath(path))
    return real_stat(path, *args, **kwargs)
  monkeypatch.setattr(integrity.os, "stat", stat)
  with pytest.raises(integrity.CheckpointReadError, match="PermissionError") as info:
    integrity.verify(step_dir, ("params",))
  assert "missing" not in str(info.value)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's leftovers
def test_a_step_without_checksums_falls_back_only_for_a_missing_file(run, tmp_path, caplog,
                                                                     monkeypatch):
  import errno
  from xlsr_jax.checkpoints import manager as manager_lib
  workdir = copy_run(run, tmp_path)
  for step in ("4", "8"):  # as saved before checksums existed
    os.remove(workdir / "checkpoints" / step / "checksums.json")
  target = _trainer_target(workdir)
  real_restore = manager_lib.ocp.CheckpointManager.restore

  def timed_out(self, step, *args, **kwargs):
    if step == 8:
      raise OSError(errno.ETIMEDOUT, "Connection timed out", "gs://bucket/w/checkpoints/8")
    return real_restore(self, step, *args, **kwargs)
  with monkeypatch.context() as patch:
    patch.setattr(manager_lib.ocp.CheckpointManager, "restore", timed_out)
    with manager_lib.CheckpointManager(workdir / "checkpoints", save_every=4, keep=3) as manager:
      with pytest.raises(manager_lib.CheckpointReadError, match="Connection timed out"):
        manager.restore_latest(target)
      assert not manager._damaged  # nothing marked for replacement
  os.remove(largest_array_file(workdir / "checkpoints" / "8"))
  with caplog.at_level(logging.WARNING), manager_lib.CheckpointManager(
      workdir / "checkpoints", save_every=4, keep=3) as manager:
    state, _ = manager.restore_latest(target)
  assert int(state.step) == 4
  assert any("a file is missing or truncated" in r.getMessage() for r in caplog.records), \
      [r.getMessage() for r in caplog.records]


def test_every_checkpoint_damaged_is_refused_in_one_line(run, data_dir, tmp_path, capsys):
  workdir = copy_run(run, tmp_path)
  for step in ("4", "8"):
    damage(largest_array_file(workdir / "checkpoints" / step))
  before = tree_digest(workdir)
  code, out, err = main_in_process(run_args(data_dir, workdir, **{"train.num_steps": 12}), capsys)
  assert code == 2 and "every checkpoint under" in err and "step 8:" in err and "step 4:" in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-3000:]
  assert_unchanged(workdir, before)  # nothing deleted


# ---------------------------------------------------------------------------------------------
# The workdir: one run at a time, a refused run changes nothing, history kept.

def test_second_run_on_a_locked_workdir_is_refused_naming_the_holder(run, data_dir, tmp_path, capsys):
  from xlsr_jax.training import workdir_lock
  workdir = copy_run(run, tmp_path)
  holder = subprocess.Popen(["sleep", "60"])
  try:
    with open(workdir / workdir_lock.LOCK_FILE, "w") as f:
      json.dump({"host": os.uname().nodename, "pid": holder.pid,
                 "start_time": workdir_lock._start_time(holder.pid), "since": "2026-01-01T00:00:00"}, f)
    before = tree_digest(workdir)
    code, out, err = main_in_process(run_args(data_dir, workdir, **{"train.num_steps": 12}), capsys)
    assert code == 2 and f"pid {holder.pid}" in err and "since 2026-01-01" in err, err
    assert_unchanged(workdir, before)
  finally:
    holder.kill()
    holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
  from xlsr_jax.training import workdir_lock
  dead = subprocess.Popen(["true"])
  dead.wait()
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"host": os.uname().nodename, "pid": dead.pid, "start_time": "1", "since": "yesterday"}))
  with workdir_lock.hold(str(tmp_path)):
    holder = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
  assert f"pid {dead.pid}" in capsys.readouterr().out
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_refused_resume_leaves_the_workdir_byte_identical(run, data_dir, tmp_path, capsys):
  workdir = copy_run(run, tmp_path)
  before = tree_digest(workdir)
  code, out, err = main_in_process(run_args(data_dir, workdir, **{"model.hidden_size": 128,
                                                                  "train.num_steps": 12}), capsys)
  assert code == 2 and "does not match the model" in err, err[-2000:]
  assert_unchanged(workdir, before)
  from xlsr_jax import export  # the intact run still exports
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'out'}"]) == 0


def test_rerunning_a_finished_run_keeps_its_metrics(run, data_dir, tmp_path, capsys):
  workdir = copy_run(run, tmp_path)
  before = tree_digest(workdir)
  code, out, err = main_in_process(run_args(data_dir, workdir), capsys)
  assert code == 0, err[-2000:]
  with open(workdir / "history.json") as f:
    assert [m["step"] for m in json.load(f)] == [2, 4, 6, 8]
  assert "nothing to train" in out and "step 8 = train.num_steps" in out, out[-2000:]
  assert_unchanged(workdir, before)  # config.json, tensorboard/ untouched too


# Resumes that cannot go on as configured: refused (exit 2) with the way on, the workdir unchanged.
REFUSED_RESUMES = [  # (id, overrides, texts the one-line error must contain)
    ("num_steps_below_the_latest_step", {"train.num_steps": 4},
     ["train.num_steps=4 is below the latest checkpoint, step 8", "above 8"]),
    ("batch_seconds_doubled", {"data.batch_seconds": 16.0, "train.num_steps": 12},
     ["global_batch_size: 8 -> 16", "--config.data.restart_input_stream=true", "_new"]),
    ("bucket_plan_changed", {"data.bucket_seconds": "[1.0]", "train.num_steps": 12},
     ["bucket_lengths", "--config.data.restart_input_stream=true", "--workdir="]),
]


@pytest.mark.parametrize("name,overrides,texts", REFUSED_RESUMES, ids=[c[0] for c in REFUSED_RESUMES])
def test_resume_that_cannot_go_on_is_refused_with_the_way_on(name, overrides, texts, run, data_dir,
                                                             tmp_path, capsys):
  workdir = copy_run(run, tmp_path)
  before = tree_digest(workdir)  # bucket_plan.json and config.json included: none written
  code, out, err = main_in_process(run_args(data_dir, workdir, **overrides), capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-3000:]
  assert all(text in err for text in texts), err
  assert_unchanged(workdir, before)


def test_restart_input_stream_accepts_another_stream_with_a_warning(capsys):
  from data_pipelines.pipeline_iterator import StreamMismatchError
  from xlsr_jax.training import loop
  from xlsr_jax.training.config_defaults import get_default_config

  class ChangedStream:
    def set_state(self, blob):
      raise StreamMismatchError({"global_batch_size": (8, 16)})
  config = get_default_config()
  with pytest.raises(loop.InputStreamChanged, match="restart_input_stream=true"):
    loop.resume_input_position(ChangedStream(), b"position", config, 8)
  config.data.restart_input_stream = True
  loop.resume_input_position(ChangedStream(), b"position", config, 8)  # accepted: from the start
  out = capsys.readouterr().out
  assert "warning:" in out and "global_batch_size: 8 -> 16" in out and "from its beginning" in out


def test_new_workdir_command_is_the_same_command_with_another_workdir():
  from xlsr_jax.main import new_workdir_command
  for argv in (["--config=c.py", "--workdir=/r/w", "--config.a=1"],
               ["--config=c.py", "--workdir", "/r/w", "--config.a=1"]):
    assert new_workdir_command(argv, "/r/w") == (
        "python -m xlsr_jax.main --config=c.py --config.a=1 --workdir=/r/w_new")


# ---------------------------------------------------------------------------------------------
# Start-up refusals: an unusable --workdir or data source; one line, exit 2, nothing created.

def _a_file(tmp_path):
  (tmp_path / "a_file").write_text("not a directory\n")
  return str(tmp_path / "a_file")


REFUSED_STARTS = [  # (id, the --workdir from tmp_path, overrides, text of the one-line error)
    ("empty_workdir", lambda p: "", {}, "--workdir is empty"),
    ("workdir_is_a_file", _a_file, {}, "a_file is a file, not a directory"),
    ("workdir_under_a_file", lambda p: _a_file(p) + "/run", {}, "lies under"),
    ("unknown_corpus", lambda p: str(p / "w"), {"data.sources": "[['synthetic_speeh/tiny', None]]"},
     "corpus 'synthetic_speeh/tiny', which is neither built"),
    ("unknown_synthetic_config", lambda p: str(p / "w"),
     {"data.sources": "[['synthetic_speech/tinyy', None]]"}, "has no such config; its configs: "),
]


@pytest.mark.parametrize("name,workdir,overrides,message", REFUSED_STARTS,
                         ids=[c[0] for c in REFUSED_STARTS])
def test_unusable_workdir_or_source_is_refused_before_anything_is_written(
    name, workdir, overrides, message, data_dir, tmp_path, capsys):
  workdir = workdir(tmp_path)
  before = sorted(os.listdir(tmp_path))
  code, out, err = main_in_process(run_args(data_dir, workdir, **overrides), capsys)
  assert code == 2 and message in err, err[-3000:]
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-3000:]
  assert sorted(os.listdir(tmp_path)) == before


def test_unwritable_workdir_is_refused(data_dir, tmp_path, capsys, monkeypatch):
  from xlsr_jax.training import workdir_lock
  # Root passes os.access on any mode: stand in for a read-only or foreign directory.
  real_access = os.access
  monkeypatch.setattr(workdir_lock.os, "access",
                      lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
  code, out, err = main_in_process(run_args(data_dir, tmp_path / "w"), capsys)
  assert code == 2 and "cannot be written" in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "w").exists()


def test_lock_that_cannot_be_created_is_unusable_and_leaves_no_directory(tmp_path, monkeypatch):
  import errno
  from xlsr_jax.training import workdir_lock

  def read_only(path, *args):
    raise OSError(errno.EROFS, "Read-only file system", path)
  monkeypatch.setattr(workdir_lock.os, "open", read_only)
  with pytest.raises(workdir_lock.WorkdirUnusable, match="Read-only file system"):
    with workdir_lock.hold(str(tmp_path / "w")):
      pass
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_first_ctrl_c_saves_and_exits_a_second_aborts(run, data_dir, tmp_path):
  for presses, expect_code in ((1, 0), (2, 130)):
    workdir = copy_run(run, tmp_path / str(presses))
    proc = launch(run_args(data_dir, workdir, **{"train.num_steps": 400, "train.log_every": 1,
                                                 "train.checkpoint_every": 100}))
    seen, sent = "", 0
    for line in proc.stdout:
      seen += line
      if "step 10/400" in line and sent == 0:
        proc.send_signal(signal.SIGINT)
        sent = 1
      elif line.startswith("interrupted:") and sent < presses:  # the first press was handled
        proc.send_signal(signal.SIGINT)
        sent += 1
    code, out = finish(proc)
    out = seen + out
    assert code == expect_code, out[-3000:]
    if presses == 1:
      steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
      assert "preempted: saved step" in out and steps[-1] > 8, (steps, out[-2000:])
      with open(workdir / "history.json") as f:
        assert [m["step"] for m in json.load(f)][-1] == steps[-1]
    else:  # one line at the end (the tracebacks of a save it interrupts go to errors.log)
      assert "aborted" in out.strip().splitlines()[-1] and "Traceback" not in out, out[-3000:]


def _limit_file_size():
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow
def test_failed_save_stops_the_run_naming_the_step_and_cause(data_dir, tmp_path):
  # Every file is limited to 64 KiB: the first checkpoint's array file cannot be written (a full
  # disk in miniature). The compilation cache is read (the Ctrl-C test's run compiled the same
  # 400-step program) but never written: its entries would hit the limit too.
  args = run_args(data_dir, tmp_path / "w", **{"train.num_steps": 400, "train.checkpoint_every": 50,
                                               "train.log_every": 5})
  proc = launch(args, preexec_fn=_limit_file_size,
                env_extra={"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"})
  code, out = finish(proc)
  assert code == 1, out[-3000:]
  error = [line for line in out.splitlines() if line.startswith("error:")]
  assert error and "saving checkpoint step 50" in error[0] and "File too large" in error[0], out[-3000:]
  # The error is the last line; the asynchronous save's tracebacks went to errors.log, not here.
  assert out.strip().splitlines()[-1] == error[0] and "Traceback" not in out, out[-3000:]
  assert "errors.log" in error[0] and "Traceback" in (tmp_path / "w" / "errors.log").read_text()
  # Stopped within a few steps of the failure, not at the next save (step 100) or later.
  assert max(int(s) for s in re.findall(r"step (\d+)/400", out)) < 100, out[-3000:]


# ---------------------------------------------------------------------------------------------
# Conversion and loading.

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny random encoder in the Hugging Face layout."""
  from xlsr_jax.checkpoints import model_files
  from xlsr_jax.downstream.encoders import random_encoder
  from xlsr_jax.models.config import get_preset
  config = get_preset("tiny")
  path = tmp_path_factory.mktemp("hf")
  model_files.save_hf(str(path), random_encoder(config), config)
  return path


def _edit_hf(hf_dir, tmp_path, key=None, shape=None, config_edit=None, config_text=None):
  from safetensors.numpy import load_file, save_file
  dst = tmp_path / "hf"
  shutil.copytree(hf_dir, dst)
  if key is not None:
    state = load_file(str(dst / "model.safetensors"))
    state[key] = np.zeros(shape, np.float32)
    save_file(state, str(dst / "model.safetensors"))
  if config_edit is not None:
    config = json.loads((dst / "config.json").read_text())
    config.update(config_edit)
    (dst / "config.json").write_text(json.dumps(config))
  if config_text is not None:
    (dst / "config.json").write_text(config_text)
  return dst


CONVERSION_FAULTS = [  # (id, how the input is made, text the error must contain)
    ("non_layer_tensor_shape", dict(key="feature_projection.projection.weight", shape=(64, 31)),
     "feature_projection.projection.weight: checkpoint (64, 31), model (64, 32)"),
    ("layer_tensor_shape", dict(key="encoder.layers.1.feed_forward.intermediate_dense.weight",
                                shape=(127, 64)),
     "encoder.layers.1.feed_forward.intermediate_dense.weight: checkpoint (127, 64), model (128, 64)"),
    ("model_type", dict(config_edit={"model_type": "hubert"}), "model_type='hubert'"),
    ("config_not_json", dict(config_text='{"model_type": "wav2vec2",\n'),
     "hf/config.json: not valid JSON"),
]


@pytest.mark.parametrize("name,edit,message", CONVERSION_FAULTS, ids=[c[0] for c in CONVERSION_FAULTS])
def test_conversion_faults_name_the_key_and_shapes(name, edit, message, hf_dir, tmp_path, capsys):
  from xlsr_jax import convert
  source = _edit_hf(hf_dir, tmp_path, **edit)
  assert convert.main(["--from=hf", f"--input={source}", f"--output={tmp_path / 'out'}"]) == 1
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err, err
  assert not (tmp_path / "out").exists()


def test_unreadable_checkpoint_files_get_one_line_naming_the_file(hf_dir, tmp_path, capsys):
  import torch
  from xlsr_jax import convert
  pt = tmp_path / "model.pt"
  torch.save({"model": {"w": torch.zeros(1000)}}, pt)
  with open(pt, "r+b") as f:
    f.truncate(os.path.getsize(pt) // 2)
  text = tmp_path / "notes.pt"
  text.write_text("not a checkpoint\n")
  broken_hf = _edit_hf(hf_dir, tmp_path)
  with open(broken_hf / "model.safetensors", "r+b") as f:
    f.truncate(100)
  for source, path in (("fairseq", pt), ("fairseq", text), ("hf", broken_hf)):
    assert convert.main([f"--from={source}", f"--input={path}", f"--output={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "expected" in err and len(err.strip().splitlines()) == 1, err


def test_a_training_workdir_as_init_says_how_to_export_it(run, capsys):
  from xlsr_jax import convert
  from xlsr_jax.downstream.encoders import InitError, load_encoder
  with pytest.raises(InitError, match="training workdir.*xlsr_jax.export"):
    load_encoder(str(run))
  assert convert.main(["--from=ours", f"--input={run}", "--output=/nonexistent/out"]) == 1
  assert "python -m xlsr_jax.export" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Data builds: bad rows of every kind skipped and counted; a changed manifest detected.

def test_manifest_build_skips_bad_language_and_detects_a_changed_manifest(tmp_path):
  from data_pipelines.corpora import __main__ as corpora_cli
  from data_pipelines.corpora import read_build_report
  from tests.fixtures.make_corpus_fixtures import write_audio
  manual = tmp_path / "manual"
  write_audio(manual / "a.wav", 1.0, 16000)
  write_audio(manual / "b.wav", 1.0, 16000, seed=1)
  (manual / "m.tsv").write_text("path\tlanguage\na.wav\ten\nb.wav\t??\n")
  argv = ["audio_manifest", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'data'}"]
  report = read_build_report(corpora_cli.main(argv))
  assert report["kept"] == 1 and report["skipped_count"] == 1
  assert "m.tsv:3" in report["skipped"][0] and "'??'" in report["skipped"][0]

  (manual / "m.tsv").write_text("path\tlanguage\na.wav\ten\nb.wav\ten\n")  # the row fixed
  with pytest.raises(SystemExit, match=r"changed.*'en': 1 -> 2 rows.*--overwrite"):
    corpora_cli.main(argv)
  report = read_build_report(corpora_cli.main(argv + ["--overwrite"]))
  assert report["kept"] == 2 and report["skipped_count"] == 0
  assert read_build_report(corpora_cli.main(argv))["kept"] == 2  # unchanged: reused


# ---------------------------------------------------------------------------------------------
# Evaluate: a model.* override that conflicts with the init is refused, naming both values.

MODEL_OVERRIDES_VS_INIT = [  # (override, value, text of the error; None: applied)
    ("model.preset", "base", "model.preset=base conflicts with the init"),
    ("model.hidden_size", "128", "model.hidden_size=128 vs the init's 64"),
    ("model.hidden_dropout", "0.2", None),
]


@pytest.mark.parametrize("key,value,message", MODEL_OVERRIDES_VS_INIT,
                         ids=[c[0] for c in MODEL_OVERRIDES_VS_INIT])
def test_evaluate_model_override_conflicting_with_the_init(key, value, message):
  from xlsr_jax.config_loading import ConfigError, apply_override
  from xlsr_jax.downstream import task_setup
  from xlsr_jax.downstream.task_config_defaults import get_default_config
  from xlsr_jax.models.config import get_preset
  config = get_default_config()
  config.init = "/exports/tiny"
  apply_override(config, key, value)
  if message is None:
    assert task_setup.model_config(config, get_preset("tiny")).hidden_dropout == 0.2
    return
  with pytest.raises(ConfigError, match=re.escape(message)) as info:
    task_setup.model_config(config, get_preset("tiny"))
  assert "/exports/tiny" in str(info.value) and "\n" not in str(info.value)


def test_evaluate_unknown_corpus_is_one_line(data_dir):
  from xlsr_jax.downstream import task_setup
  from xlsr_jax.downstream.task_config_defaults import get_default_config
  config = get_default_config()
  config.data.corpus, config.data.data_dir = "librispeeh_asr", data_dir
  with pytest.raises(task_setup.TaskError, match="data.corpus='librispeeh_asr' is neither built") as info:
    task_setup.open_corpus(config)
  assert "\n" not in str(info.value)
