"""Linear probes that converge: standardised features, full-batch L2 logistic regression (L-BFGS).

The probe sees cached per-utterance statistics x [layers + 1, n, P] (one pooled vector per
layer, `features.pooled_features`), standardised with the training features' mean and standard
deviation, and combines the layers in one of three ways (`LAYER_MODES`):
  concat    [n, (layers + 1) * P]: every layer side by side (a convex problem);
  weighted  SUPERB softmax weights over the layers [layers + 1], learned jointly with the
            classifier (not convex in the weights; L-BFGS from equal weights);
  last      the encoder output only.
The classifier is softmax regression with an unpenalised bias, minimising

  sum_i w_i * cross_entropy(x_i W + b, y_i) / n + l2 / 2 * ||W||^2

by full-batch L-BFGS (optax.lbfgs, zoom line search) until the largest gradient entry is below
`tol`. With w_i = 1 this is scikit-learn's `LogisticRegression(C=1 / (l2 * n))` objective
(divided by C n); `class_weight="balanced"` gives w_i = n / (C * n_{y_i}), as scikit-learn's
"balanced". `fit_with_l2_search` fits a grid of strengths from the strongest to the weakest
(each warm-started from the previous solution) and keeps the best on the validation features.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xlsr_jax.downstream import metrics as metrics_lib

LAYER_MODES = ("concat", "weighted", "last")
CLASS_WEIGHTS = ("none", "balanced")
SELECT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")
_MIN_SCALE = 1e-6  # a feature constant over the training set is left unscaled


@dataclasses.dataclass(frozen=True)
class Standardizer:
  """Per-layer, per-feature mean and scale [layers + 1, P] from the training features."""
  mean: np.ndarray
  scale: np.ndarray

  @classmethod
  def fit(cls, x_lnp: np.ndarray) -> "Standardizer":
    """Statistics over the utterance axis of x [layers + 1, n, P] (population std, as
    scikit-learn's StandardScaler; features with std < 1e-6 keep scale 1)."""
    x = np.asarray(x_lnp, np.float64)
    mean, std = x.mean(axis=1), x.std(axis=1)
    return cls(mean.astype(np.float32), np.where(std < _MIN_SCALE, 1.0, std).astype(np.float32))

  def __call__(self, x_lnp: np.ndarray) -> np.ndarray:
    """x [layers + 1, n, P] -> standardised float32, same shape."""
    return ((np.asarray(x_lnp, np.float32) - self.mean[:, None]) / self.scale[:, None])


def sample_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
  """float32 [n]: ones ("none") or n / (classes present * n_class) ("balanced")."""
  if mode not in CLASS_WEIGHTS:
    raise ValueError(f"class_weight {mode!r} is not one of {CLASS_WEIGHTS}")
  labels = np.asarray(labels)
  if mode == "none":
    return np.ones(labels.shape, np.float32)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  present = int((counts > 0).sum())
  return (len(labels) / (present * counts[labels])).astype(np.float32)


def combine_layers(params: dict, x_lnp: jax.Array, layers: str) -> jax.Array:
  """Standardised x [layers + 1, n, P] -> the classifier input [n, F] for a layer mode."""
  if layers == "concat":
    return jnp.transpose(x_lnp, (1, 0, 2)).reshape(x_lnp.shape[1], -1)
  if layers == "weighted":
    return jnp.tensordot(jax.nn.softmax(params["layer_logits"]), x_lnp, axes=(0, 0))
  if layers == "last":
    return x_lnp[-1]
  raise ValueError(f"probe layers {layers!r} is not one of {LAYER_MODES}")


def init_params(num_layers: int, num_features: int, num_classes: int, layers: str) -> dict:
  """Zeros: kernel [F, C], bias [C] (and equal layer weights [layers + 1] for "weighted")."""
  width = num_layers * num_features if layers == "concat" else num_features
  params = {"kernel": jnp.zeros((width, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  if layers == "weighted":
    params["layer_logits"] = jnp.zeros((num_layers,), jnp.float32)
  return params


def logits_fn(params: dict, x_lnp: jax.Array, layers: str) -> jax.Array:
  """[n, C] float32 logits of standardised x [layers + 1, n, P]."""
  return combine_layers(params, x_lnp, layers) @ params["kernel"] + params["bias"]


def objective(params: dict, x_lnp: jax.Array, labels: jax.Array, weights: jax.Array,
              l2: jax.Array, layers: str) -> jax.Array:
  """sum_i w_i CE_i / n + l2 / 2 ||kernel||^2 (bias and layer weights unpenalised)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x_lnp, layers), labels)
  return jnp.sum(weights * ce) / labels.shape[0] + 0.5 * l2 * jnp.sum(jnp.square(params["kernel"]))


def _max_abs(tree: Any) -> jax.Array:
  return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(tree)]))


@partial(jax.jit, static_argnames=("layers", "max_iter"))
def _lbfgs(params: dict, x_lnp: jax.Array, labels: jax.Array, weights: jax.Array, l2: jax.Array,
           tol: jax.Array, *, layers: str, max_iter: int
           ) -> tuple[dict, jax.Array, jax.Array, jax.Array]:
  """(params, objective, largest |gradient| entry, iterations) after L-BFGS from `params`."""
  fun = lambda p: objective(p, x_lnp, labels, weights, l2, layers)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    p, state, i = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(p, updates), state, i + 1

  def keep_going(carry):
    _, state, i = carry
    grad = optax.tree.get(state, "grad")
    return (i == 0) | ((i < max_iter) & (_max_abs(grad) >= tol))

  state = solver.init(params)
  params, state, iterations = jax.lax.while_loop(keep_going, step, (params, state, jnp.int32(0)))
  value, grad = jax.value_and_grad(fun)(params)
  return params, value, _max_abs(grad), iterations


@dataclasses.dataclass
class ProbeFit:
  """A fitted probe: parameters, the strength used and how the optimisation ended."""
  params: dict
  l2: float
  layers: str
  objective: float
  grad_max: float
  iterations: int
  converged: bool

  def logits(self, x_std_lnp: np.ndarray) -> np.ndarray:
    """[n, C] logits of standardised features [layers + 1, n, P]."""
    return np.asarray(jax.jit(logits_fn, static_argnums=2)(self.params, jnp.asarray(x_std_lnp),
                                                          self.layers))


def fit_logistic_regression(x_std_lnp: np.ndarray, labels: np.ndarray, num_classes: int, *,
                            l2: float, layers: str = "concat", weights: np.ndarray | None = None,
                            init: dict | None = None, max_iter: int = 2000, tol: float = 1e-6
                            ) -> ProbeFit:
  """L2 logistic regression on standardised x [layers + 1, n, P], labels int [n] in [0, C).

  `init` warm-starts from another fit's params (same layer mode and shapes).
  """
  if layers not in LAYER_MODES:
    raise ValueError(f"probe layers {layers!r} is not one of {LAYER_MODES}")
  x = jnp.asarray(x_std_lnp, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)
  w = jnp.ones(y.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  params = init if init is not None else init_params(x.shape[0], x.shape[2], num_classes, layers)
  params, value, grad_max, iterations = _lbfgs(params, x, y, w, jnp.float32(l2), jnp.float32(tol),
                                               layers=layers, max_iter=max_iter)
  grad_max = float(grad_max)
  return ProbeFit(jax.tree.map(np.asarray, params), float(l2), layers, float(value), grad_max,
                  int(iterations), grad_max < tol)


def score(metric: str, logits: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Validation score, higher is better (log_loss is returned negated)."""
  labels = np.asarray(labels)
  if metric == "log_loss":
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), -1))
    return float(np.mean(log_probs[np.arange(len(labels)), labels]))
  names = [str(i) for i in range(num_classes)]
  return metrics_lib.classification_metrics(labels, np.argmax(logits, -1), names)[metric]


def fit_with_l2_search(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                       y_val: np.ndarray, num_classes: int, *, l2_grid: Sequence[float],
                       layers: str = "concat", class_weight: str = "none",
                       select_metric: str = "accuracy", max_iter: int = 2000, tol: float = 1e-6,
                       log=print) -> tuple[ProbeFit, list[dict]]:
  """Fits every strength of `l2_grid` on the (standardised) training features and keeps the one
  with the best `select_metric` on the validation features (ties: the stronger penalty).

  Returns (the chosen fit, one row per strength: l2, validation score, iterations, converged).
  """
  if select_metric not in SELECT_METRICS:
    raise ValueError(f"select_metric {select_metric!r} is not one of {SELECT_METRICS}")
  if not l2_grid or min(l2_grid) <= 0:
    raise ValueError(f"l2_grid must hold positive strengths, found {list(l2_grid)}")
  weights = sample_weights(y_train, num_classes, class_weight)
  best, rows, init = None, [], None
  for l2 in sorted(set(float(v) for v in l2_grid), reverse=True):
    fit = fit_logistic_regression(x_train, y_train, num_classes, l2=l2, layers=layers,
                                  weights=weights, init=init, max_iter=max_iter, tol=tol)
    init = fit.params
    train_acc = float(np.mean(np.argmax(fit.logits(x_train), -1) == np.asarray(y_train)))
    value = score(select_metric, fit.logits(x_val), y_val, num_classes)
    rows.append({"l2": l2, f"validation_{select_metric}": value, "train_accuracy": train_acc,
                 "iterations": fit.iterations, "converged": fit.converged})
    log(f"[probe] l2={l2:g}: validation {select_metric}={value:.4f}, train accuracy="
        f"{train_acc:.4f}, {fit.iterations} L-BFGS iterations"
        f"{'' if fit.converged else f' (not converged: max |grad| {fit.grad_max:.2g})'}")
    if best is None or value > best[0]:
      best = (value, fit)
  return best[1], rows


def head_params(fit: ProbeFit, standardizer: Standardizer) -> dict:
  """The fit as `heads.UtteranceClassifier(standardize=True, ...)` parameters (unboxed numpy):
  concat -> concat_layers=True, weighted -> layer_weighting=True, last -> neither."""
  params = {"feature_mean": np.asarray(standardizer.mean, np.float32),
            "feature_scale": np.asarray(standardizer.scale, np.float32),
            "classifier": {"kernel": np.asarray(fit.params["kernel"], np.float32),
                           "bias": np.asarray(fit.params["bias"], np.float32)}}
  if fit.layers == "weighted":
    params["layer_weights"] = {"layer_weights": np.asarray(fit.params["layer_logits"], np.float32)}
  return params
