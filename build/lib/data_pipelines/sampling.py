"""Data-balancing weights: p proportional to (n / N)^alpha, for languages and for (corpus, language).

alpha = 1 keeps natural proportions, alpha = 0 is uniform, XLS-R uses 0.5 (upsampling
low-resource languages). `two_level_weights` applies the rule twice, as the XLS-R paper does:
a corpus is drawn with probability proportional to its total hours^alpha, then a language inside
it proportional to that language's hours^alpha within the corpus.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping


def _check(hours: Mapping[Hashable, float], alpha: float, where: str) -> None:
  """Raises ValueError unless `hours` is non-empty with finite positive values and alpha is finite."""
  if not hours:
    raise ValueError(f"{where}: expected at least one source with hours, found none")
  if not math.isfinite(alpha) or alpha < 0:
    raise ValueError(f"{where}: expected a finite alpha >= 0 (1 natural, 0 uniform), found {alpha!r}")
  bad = {name: h for name, h in hours.items() if not (math.isfinite(h) and h > 0)}
  if bad:
    listed = ", ".join(f"{name!r}: {h!r}" for name, h in bad.items())
    raise ValueError(
        f"{where}: every source needs a finite positive number of hours; found {listed} "
        "(drop empty sources from the config, or rebuild them)")


def language_weights(hours: Mapping[Hashable, float], alpha: float) -> dict[Hashable, float]:
  """`{name: hours} -> {name: p}` with p proportional to (hours / total)^alpha, summing to 1."""
  _check(hours, alpha, "language_weights")
  total = sum(hours.values())
  # Work with log-weights so that huge hour counts and tiny alphas stay exact and finite.
  logs = {name: alpha * math.log(h / total) for name, h in hours.items()}
  top = max(logs.values())
  unnormalised = {name: math.exp(v - top) for name, v in logs.items()}
  norm = sum(unnormalised.values())
  return {name: w / norm for name, w in unnormalised.items()}


def two_level_weights(hours: Mapping[tuple[str, str], float],
                      alpha: float) -> dict[tuple[str, str], float]:
  """`{(corpus, language): hours} -> {(corpus, language): p}`, summing to 1.

  p(corpus, language) = p(corpus) * p(language | corpus), where p(corpus) is proportional to the
  corpus's total hours^alpha and p(language | corpus) to the language's hours^alpha in the corpus.
  """
  _check(hours, alpha, "two_level_weights")
  for key in hours:
    if not (isinstance(key, tuple) and len(key) == 2):
      raise ValueError(f"two_level_weights: expected keys (corpus, language), found {key!r}")
  by_corpus: dict[str, dict[str, float]] = {}
  for (corpus, language), h in hours.items():
    by_corpus.setdefault(corpus, {})[language] = h
  corpus_p = language_weights({c: sum(langs.values()) for c, langs in by_corpus.items()}, alpha)
  weights = {}
  for corpus, langs in by_corpus.items():
    for language, p in language_weights(langs, alpha).items():
      weights[(corpus, language)] = corpus_p[corpus] * p
  return weights
