"""The converged linear probe against scikit-learn, its metrics, and its exported head.

scikit-learn (test-only) is the reference: on a small fixture with separable classes and on real
tiny-encoder features of the synthetic corpus, our L-BFGS logistic regression and
`LogisticRegression` on the same standardised features reach accuracies within 2 points, with
the same predicted probabilities to a few 1e-3.
"""
import numpy as np
import pytest

from xlsr_jax.downstream import metrics, probes

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def _separable(seed=0, draw=0, n=240, classes=4, layers=3, dim=8, informative=None):
  """x [layers, n, dim], y [n]: class centres per layer (from `seed`; only the `informative`
  layers if given) plus unit noise (from `draw`: another draw is a test set)."""
  centres = 3.0 * np.random.default_rng(seed).normal(size=(classes, layers, dim))
  rng = np.random.default_rng([seed, draw + 1])
  if informative is not None:
    mask = np.zeros((1, layers, 1))
    mask[0, informative] = 1.0
    centres = centres * mask
  y = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
  y = np.where(rng.random(n) < 0.5, 0, y)  # class 0 holds about half: an imbalanced prior
  x = centres[y].transpose(1, 0, 2) + rng.normal(size=(layers, n, dim))
  return x.astype(np.float32), y


def _flat(x_lnp):
  return x_lnp.transpose(1, 0, 2).reshape(x_lnp.shape[1], -1)


def _sklearn(x_std, y, l2, class_weight=None):
  return LogisticRegression(C=1.0 / (l2 * len(y)), max_iter=20_000, tol=1e-10,
                            class_weight=class_weight).fit(_flat(x_std), y)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("class_weight", ["none", "balanced"])
def test_probe_equals_sklearn_on_separable_classes(class_weight):
  x, y = _separable()
  x_test, y_test = _separable(draw=1)
  st = probes.Standardizer.fit(x)
  np.testing.assert_allclose(st(x).mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(st(x).std(axis=1), 1.0, atol=1e-4)
  l2 = 1e-2
  weights = probes.sample_weights(y, 4, class_weight)
  fit = probes.fit_logistic_regression(st(x), y, 4, l2=l2, weights=weights)
  assert fit.converged and fit.grad_max < 1e-5
  ref = _sklearn(st(x), y, l2, None if class_weight == "none" else "balanced")
  ours = _softmax(fit.logits(st(x_test)))
  theirs = ref.predict_proba(_flat(st(x_test)))
  assert np.abs(ours - theirs).max() < 5e-3
  our_acc = np.mean(ours.argmax(-1) == y_test)
  assert our_acc > 0.9  # separable: the fixture is not a coin toss
  assert abs(our_acc - ref.score(_flat(st(x_test)), y_test)) <= 0.02


def test_balanced_weights_are_sklearns():
  y = np.array([0, 0, 0, 1, 2, 2])
  from sklearn.utils.class_weight import compute_sample_weight
  np.testing.assert_allclose(probes.sample_weights(y, 4, "balanced"),
                             compute_sample_weight("balanced", y), rtol=1e-6)
  with pytest.raises(ValueError, match="class_weight 'equal'"):
    probes.sample_weights(y, 3, "equal")


def test_weighted_layers_find_the_informative_layer_and_l2_search_uses_validation():
  x, y = _separable(informative=[1], seed=2)
  x_val, y_val = _separable(informative=[1], seed=2, draw=1)
  st = probes.Standardizer.fit(x)
  fit, rows = probes.fit_with_l2_search(st(x), y, st(x_val), y_val, 4, l2_grid=[1.0, 1e-2, 1e3],
                                        layers="weighted", log=lambda _: None)
  weights = np.exp(fit.params["layer_logits"]) / np.exp(fit.params["layer_logits"]).sum()
  assert weights.argmax() == 1 and weights[1] > 0.5
  # Rows run from the strongest penalty; l2=1000 cannot fit, so it is never the choice.
  assert [r["l2"] for r in rows] == [1e3, 1.0, 1e-2]
  assert rows[0]["validation_accuracy"] < 0.8 and fit.l2 != 1e3
  best = max(r["validation_accuracy"] for r in rows)
  assert [r for r in rows if r["l2"] == fit.l2][0]["validation_accuracy"] == best


def test_class_fair_metrics_equal_sklearn_and_baselines():
  y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3])
  p = np.array([0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 0])
  m = metrics.classification_metrics(y, p, ["a", "b", "c", "d"])
  assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
  assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
  assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
  assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
  assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
  # A prior-only classifier: always class 0, the training majority.
  b = metrics.baselines(np.array([0, 0, 1, 2, 3, 0]), y, 4)
  prior = metrics.classification_metrics(y, np.zeros_like(y), ["a", "b", "c", "d"])
  assert b["majority_class"]["class"] == 0
  for k in ("accuracy", "balanced_accuracy", "macro_f1"):
    assert b["majority_class"][k] == pytest.approx(prior[k])
  assert b["majority_class"]["balanced_accuracy"] == pytest.approx(0.25)
  assert b["chance"]["accuracy"] == b["chance"]["balanced_accuracy"] == 0.25


def test_holdout_takes_a_share_of_every_class_once():
  from xlsr_jax.downstream.linear_probe import holdout
  y = np.array([0] * 50 + [1] * 10 + [2] * 2 + [3])
  fit, val = holdout(y, 0.1, seed=0)
  assert np.bincount(y[val], minlength=4).tolist() == [5, 1, 1, 0]  # a lone class stays in train
  assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(y)))
  assert holdout(y, 0.1, seed=0)[1].tolist() == val.tolist()


@pytest.fixture(scope="module")
def tiny_features(synthetic_tiny_dir):
  """Pooled per-layer features of a random tiny encoder on synthetic_speech/tiny (LID labels)."""
  from data_pipelines.synthetic_speech import SyntheticSpeech
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream import encoders, pooled_features
  from xlsr_jax.models.config import get_preset
  builder = SyntheticSpeech(config="tiny", data_dir=synthetic_tiny_dir)
  config = get_preset("tiny")
  params = encoders.random_encoder(config, seed=0)
  train_names = data_lib.split_names(builder, "train", None)
  names = data_lib.class_names_from(data_lib.index_split(builder, train_names), "language",
                                    "lid")
  labeler = data_lib.ClassLabeler("language", names)
  out = {}
  for split in ("train", "test"):
    split_names = data_lib.split_names(builder, split, None)
    index = data_lib.index_split(builder, split_names)
    out[split] = pooled_features.pooled_features(
        params, config, builder, split_names, labeler, pooling="mean", batch_size=8,
        max_samples=pooled_features.split_max_samples(index.num_samples, 0), log=lambda _: None)
  return dict(out, params=params, config=config, builder=builder, labeler=labeler, names=names)


def test_probe_equals_sklearn_on_real_encoder_features(tiny_features):
  (x, y), (x_test, y_test) = tiny_features["train"], tiny_features["test"]
  # tiny: 2 layers + the Transformer input, 64 wide; 3 languages.
  assert x.shape[0] == 3 and x.shape[2] == 64 and len(set(y.tolist())) == 3
  st = probes.Standardizer.fit(x)
  for l2 in (1e-1, 1e-3):
    fit = probes.fit_logistic_regression(st(x), y, 3, l2=l2)
    ref = _sklearn(st(x), y, l2)
    ours = np.mean(fit.logits(st(x_test)).argmax(-1) == y_test)
    assert abs(ours - ref.score(_flat(st(x_test)), y_test)) <= 0.02, l2
    theirs = ref.predict_proba(_flat(st(x_test)))
    assert np.abs(_softmax(fit.logits(st(x_test))) - theirs).max() < 2e-2


@pytest.mark.parametrize("layers", ["concat", "weighted", "last"])
def test_exported_head_on_waveforms_gives_the_probes_logits(tiny_features, layers):
  import jax.numpy as jnp
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream import heads
  (x, y), (x_test, _) = tiny_features["train"], tiny_features["test"]
  st = probes.Standardizer.fit(x)
  fit = probes.fit_logistic_regression(st(x), y, 3, l2=1e-2, layers=layers)
  model = heads.Wav2Vec2ForUtteranceClassification(
      tiny_features["config"], 3, "mean", layers == "weighted", 0, freeze_encoder=True,
      concat_layers=layers == "concat", standardize=True)
  params = {"wav2vec2": tiny_features["params"], "head": probes.head_params(fit, st)}
  builder = tiny_features["builder"]
  names = data_lib.split_names(builder, "test", None)
  index = data_lib.index_split(builder, names)
  from xlsr_jax.downstream.pooled_features import split_max_samples
  batch = next(data_lib.eval_batches(builder, names, tiny_features["labeler"], batch_size=8,
                                     max_samples=split_max_samples(index.num_samples, 0)))
  logits = model.apply({"params": params}, jnp.asarray(batch["waveform"]),
                       jnp.asarray(batch["padding_mask"]))["logits"]
  np.testing.assert_allclose(np.asarray(logits), fit.logits(st(x_test[:, :8])), atol=2e-4,
                             rtol=1e-4)
