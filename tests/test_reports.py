"""The downstream report writer: files, JSON round trip, confusion counts, PCA, valid PNGs."""
from __future__ import annotations

import json

from matplotlib import image as mpimg
import numpy as np
import pytest

from xlsr_jax.downstream import reports

LANGUAGES = [f"l{i:02d}" for i in range(25)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """One full report: 25 classes, 200 embeddings in 25 labelled clusters, two curves."""
  out_dir = tmp_path_factory.mktemp("report")
  rng = np.random.default_rng(0)
  y_true = rng.integers(0, 25, 500)
  y_pred = np.where(rng.random(500) < 0.8, y_true, rng.integers(0, 25, 500))
  confusion = reports.confusion_matrix(y_true, y_pred, 25)
  metrics = {"accuracy": float(np.mean(y_true == y_pred)), "error_rate": 0.2, "num_test": 500,
             "per_language": {lang: {"accuracy": 0.5 + i / 100, "n": 20}
                              for i, lang in enumerate(LANGUAGES)},
             "train": {"steps": 300, "final_loss": np.float32(0.25)}}
  labels = [LANGUAGES[i % 25] for i in range(200)]
  embeddings = rng.normal(size=(200, 32)) + 4 * np.eye(32)[[i % 25 for i in range(200)]]
  curves = {"train/loss": [(s, 3.0 / (1 + s)) for s in range(0, 300, 10)],
            "validation/accuracy": [(s, s / 300) for s in range(0, 300, 50)]}
  path = reports.write_report(out_dir, "lid", metrics, confusion=confusion, labels=LANGUAGES,
                              embeddings=embeddings, embedding_labels=labels, curves=curves)
  return out_dir, path, metrics, confusion


def test_every_file_is_written_and_linked(written):
  out_dir, path, _, _ = written
  assert path == str(out_dir / "report.md")
  names = {p.name for p in out_dir.iterdir()}
  assert names == {"report.md", "metrics.json", reports.CONFUSION_PNG, reports.CONFUSION_CSV,
                   reports.EMBEDDINGS_PNG, reports.CURVES_PNG}
  text = (out_dir / "report.md").read_text()
  for png in (reports.CONFUSION_PNG, reports.EMBEDDINGS_PNG, reports.CURVES_PNG):
    assert f"]({png})" in text
  assert "# lid evaluation" in text
  assert "| accuracy | " in text and "| train.final_loss | 0.25 |" in text
  assert "| language | accuracy | n |" in text and "| l07 | 0.57 | 20 |" in text


def test_metrics_json_round_trips(written):
  out_dir, _, metrics, _ = written
  loaded = json.loads((out_dir / "metrics.json").read_text())
  expected = dict(metrics, train={"steps": 300, "final_loss": 0.25})
  assert loaded == expected


def test_pngs_are_valid_images(written):
  out_dir = written[0]
  for png in (reports.CONFUSION_PNG, reports.EMBEDDINGS_PNG, reports.CURVES_PNG):
    pixels = mpimg.imread(out_dir / png)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), (png, pixels.shape)
    assert min(pixels.shape[:2]) >= 400, (png, pixels.shape)  # 25 labels need room
    assert pixels[..., :3].std() > 0.05, png  # not a blank canvas


def test_confusion_csv_holds_the_counts(written):
  out_dir, _, _, confusion = written
  rows = (out_dir / reports.CONFUSION_CSV).read_text().splitlines()
  assert rows[0].split(",")[1:] == LANGUAGES
  assert [int(c) for c in rows[3].split(",")[1:]] == confusion[2].tolist()


def test_confusion_matrix_equals_a_hand_count():
  y_true = [0, 0, 1, 2, 2, 2, 1]
  y_pred = [0, 1, 1, 2, 0, 2, 1]
  np.testing.assert_array_equal(reports.confusion_matrix(y_true, y_pred, 4),
                                [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
  accuracy = reports.per_class_accuracy(reports.confusion_matrix(y_true, y_pred, 4))
  np.testing.assert_allclose(accuracy[:3], [0.5, 1.0, 2 / 3])
  assert np.isnan(accuracy[3])
  np.testing.assert_allclose(reports.normalize_rows(np.array([[1, 3], [0, 0]])),
                             [[0.25, 0.75], [0, 0]])
  with pytest.raises(ValueError, match=r"y_pred holds class ids \[4\] outside \[0, 4\)"):
    reports.confusion_matrix([0], [4], 4)


def test_pca_separates_two_clusters():
  rng = np.random.default_rng(1)
  direction = rng.normal(size=64)
  a = rng.normal(size=(50, 64)) * 0.3 + 3 * direction / np.linalg.norm(direction)
  b = rng.normal(size=(50, 64)) * 0.3 - 3 * direction / np.linalg.norm(direction)
  points, explained = reports.pca_2d(np.concatenate([a, b]))
  assert points.shape == (100, 2)
  first = points[:, 0]
  assert (first[:50].min() > first[50:].max()) or (first[:50].max() < first[50:].min())
  assert explained[0] > 0.5 and explained.sum() <= 1.0 + 1e-9
  one_dim, explained_1d = reports.pca_2d(np.arange(5.0)[:, None])
  assert np.all(one_dim[:, 1] == 0) and explained_1d[1] == 0


def test_report_without_plots_and_with_nan(tmp_path):
  path = reports.write_report(tmp_path, "sid", {"accuracy": float("nan"), "top5": [0.9, 0.95]},
                              title="SID on synthetic_speech")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.md"]
  assert json.loads((tmp_path / "metrics.json").read_text()) == {"accuracy": None,
                                                                  "top5": [0.9, 0.95]}
  text = open(path).read()
  assert text.startswith("# SID on synthetic_speech") and "| top5 | [0.9, 0.95] |" in text


def test_mismatched_arguments_are_errors_naming_them(tmp_path):
  with pytest.raises(ValueError, match="labels has 2 names for a 3-class confusion matrix"):
    reports.write_report(tmp_path, "lid", {}, confusion=np.eye(3), labels=["a", "b"])
  with pytest.raises(ValueError, match="embedding_labels must name each of the 4 embeddings"):
    reports.write_report(tmp_path, "lid", {}, embeddings=np.zeros((4, 2)), embedding_labels=["a"])
  with pytest.raises(ValueError, match="curve 'loss' must be a non-empty list"):
    reports.write_report(tmp_path, "lid", {}, curves={"loss": []})
