"""A pretraining workdir's history.json: segments kept across resumes, older runs' metrics.json read."""
import json

from xlsr_jax.training import metrics_file


def test_a_resume_keeps_entries_up_to_its_step_and_replaces_the_rest(tmp_path):
  metrics_file.write(str(tmp_path), 0, [{"step": 2}, {"step": 4}, {"step": 6}])
  metrics_file.write(str(tmp_path), 4, [{"step": 6, "loss": 1.0}, {"step": 8}])
  entries = json.loads((tmp_path / "history.json").read_text())
  assert entries == [{"step": 2}, {"step": 4}, {"step": 6, "loss": 1.0}, {"step": 8}]
  assert not (tmp_path / "metrics.json").exists()


def test_a_run_written_before_the_rename_resumes_from_its_metrics_json(tmp_path):
  (tmp_path / "metrics.json").write_text(json.dumps([{"step": 2}, {"step": 4}]))
  assert metrics_file.read(str(tmp_path)) == [{"step": 2}, {"step": 4}]
  metrics_file.write(str(tmp_path), 4, [{"step": 6}])
  assert [e["step"] for e in metrics_file.read(str(tmp_path))] == [2, 4, 6]
  assert json.loads((tmp_path / "history.json").read_text())[-1] == {"step": 6}
