"""Documented clip-length distributions of the XLS-R corpora, for plans and benchmarks.

A profile is what a user without the corpus can reason with: how long its utterances are. With
the corpus built, its real length index (`sources.split_lengths`) replaces the profile.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.features import SAMPLE_RATE

# Documented clip-length distributions: (kind, parameters in seconds, source). "lognormal":
# (median, sigma, low, high) clipped; "uniform": (low, high). Values marked unconfirmed are our
# reading, kept as values so a user with the corpus replaces them by its length index.
PROFILES = {
    "common_voice": ("lognormal", (4.5, 0.35, 1.0, 10.0),
                     "read single sentences; the recording app stops at 10 s; median ~4.5 s "
                     "(unconfirmed)"),
    "voxpopuli": ("uniform", (15.0, 30.0),
                  "unlabelled data VAD-segmented into 15-30 s segments (VoxPopuli paper, Wang et "
                  "al. 2021, sec. 3)"),
    "mls": ("uniform", (10.0, 20.0),
            "audiobook segments of 10-20 s (MLS paper, Pratap et al. 2020, sec. 2)"),
    "voxlingua107": ("lognormal", (8.0, 0.5, 2.0, 20.0),
                     "YouTube speech cut by VAD, varying length; median 8 s (unconfirmed)"),
    "babel": ("lognormal", (3.0, 0.6, 0.5, 15.0),
              "conversational telephone turns, a few seconds (unconfirmed)"),
}
# XLS-R's corpus hours (spec: VoxPopuli 372K, MLS 50K, CV 7K, VoxLingua107 6.6K, BABEL 1K), mixed
# with the corpus-level weight hours^0.5 as the pipeline draws utterances.
XLSR_HOURS = {"voxpopuli": 372e3, "mls": 50e3, "common_voice": 7e3, "voxlingua107": 6.6e3,
              "babel": 1e3}


def draw(name: str, count: int, rng: np.random.Generator) -> np.ndarray:
  """Utterance lengths in samples, int64 [count], from a documented profile (or the XLS-R mix)."""
  if name == "xlsr_mix":
    weights = np.array([h ** 0.5 for h in XLSR_HOURS.values()])
    picks = rng.choice(len(weights), size=count, p=weights / weights.sum())
    parts = [draw(c, int(np.sum(picks == i)), rng) for i, c in enumerate(XLSR_HOURS)]
    return rng.permutation(np.concatenate(parts))
  kind, params, _ = PROFILES[name]
  if kind == "uniform":
    seconds = rng.uniform(params[0], params[1], count)
  else:
    median, sigma, low, high = params
    seconds = np.clip(median * np.exp(sigma * rng.standard_normal(count)), low, high)
  return np.round(seconds * SAMPLE_RATE).astype(np.int64)


NAMES = (*PROFILES, "xlsr_mix")
