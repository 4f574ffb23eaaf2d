"""Frozen-encoder features for probes: per-layer pooled statistics, computed once and cached.

`pooled_features` runs the encoder once over every utterance of a split (whole utterances,
inference mode) and keeps only the pooled statistics of every layer, float32
[layers + 1, utterances, P] (P = dim for "mean", 2 * dim for "mean_std"), with the labels [n].
`cached_pooled_features` stores them in an .npz beside the run, keyed by a fingerprint of
everything they depend on (encoder source and its files' modification times, model overrides,
corpus, splits, pooling, crop length, normalisation), so a re-run or another probe setting on
the same encoder reads them instead of encoding the audio again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.downstream import data as data_lib
from xlsr_jax.downstream.heads import pool, stack_hidden_states
from xlsr_jax.models import Wav2Vec2Model
from xlsr_jax.models.config import Wav2Vec2Config


@partial(jax.jit, static_argnums=(0, 1))
def _pooled(config: Wav2Vec2Config, pooling: str, params: dict, waveform: jax.Array,
            padding_mask: jax.Array) -> jax.Array:
  out = Wav2Vec2Model(config).apply({"params": params}, waveform, padding_mask,
                                    return_layer_outputs=True)
  return pool(stack_hidden_states(out), out["frame_valid"], pooling)


def split_max_samples(num_samples: Sequence[int], eval_max_sample_size: int) -> int:
  """The padded length that fits every utterance (rounded up to 0.5 s), or the configured cap."""
  if eval_max_sample_size:
    return int(eval_max_sample_size)
  longest = max(num_samples) if len(num_samples) else 8000
  return int(np.ceil(longest / 8000) * 8000)


def pooled_features(params: dict, config: Wav2Vec2Config, builder, names: Sequence[str],
                    labeler: data_lib.Labeler, *, pooling: str, batch_size: int, max_samples: int,
                    normalize: bool = True, log=print, what: str = ""
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(pooled float32 [layers + 1, n, P], labels int32 [n]) for every utterance of the splits, in
  reading order; labels are -1 for classes the labeler does not know."""
  pooled, labels = [], []
  start = time.perf_counter()
  for batch in data_lib.eval_batches(builder, names, labeler, batch_size=batch_size,
                                     max_samples=max_samples, normalize=normalize):
    keep = batch["example_valid"]
    out = np.asarray(jax.device_get(_pooled(config, pooling, params, jnp.asarray(batch["waveform"]),
                                            jnp.asarray(batch["padding_mask"]))))
    pooled.append(out[:, keep])
    labels.append(batch["label"][keep])
    count = sum(p.shape[1] for p in pooled)
    log(f"[features{' ' + what if what else ''}] {count} utterances "
        f"({time.perf_counter() - start:.0f} s)")
  return np.concatenate(pooled, axis=1), np.concatenate(labels).astype(np.int32)


def fingerprint(**parts: Any) -> str:
  """A short hash of JSON-able parts (sorted keys)."""
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def init_stamp(init: str) -> dict:
  """What identifies an init's content cheaply: its path and the newest mtime of its files."""
  if init == "random" or not os.path.exists(init):
    return {"init": init}
  paths = [init] if os.path.isfile(init) else [
      os.path.join(root, f) for root, _, files in os.walk(init) for f in files]
  return {"init": os.path.abspath(init), "mtime": max((os.path.getmtime(p) for p in paths),
                                                      default=0.0)}


def cached_pooled_features(path: str, key: str, compute, log=print
                           ) -> tuple[np.ndarray, np.ndarray]:
  """`compute()`'s (features, labels), read from `path` when it holds the same `key`."""
  if os.path.exists(path):
    with np.load(path) as stored:
      if str(stored["key"]) == key:
        log(f"[features] read from {path}")
        return stored["features"], stored["labels"]
  features, labels = compute()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, key=np.asarray(key), features=features, labels=labels)
  os.replace(tmp, path)
  return features, labels
