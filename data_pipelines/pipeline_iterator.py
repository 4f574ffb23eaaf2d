"""A saveable, prefetching iterator over a sequential tf.data pipeline (positions-only state).

`PipelineIterator` hands out numpy batches prepared in a thread and saves its exact position: the
dataset must not run ahead (no prefetch or parallel map), so the tf.data iterator state holds
file indices, record offsets and counters, not audio.
"""
from __future__ import annotations

import io
import json
import os
import queue
import threading
import zipfile
from typing import Any

import numpy as np
import tensorflow as tf


class StreamMismatchError(ValueError):
  """`set_state` of a position saved for another stream; `diff`: {setting: (saved, current)}."""

  def __init__(self, diff: dict[str, tuple[Any, Any]]):
    super().__init__(f"input pipeline state was saved for a different stream; (saved, current) "
                     f"differ in {diff}")
    self.diff = diff


class PipelineIterator:
  """Numpy batches of a pretraining dataset, prefetched in a thread; the position saves exactly.

  The dataset must not run ahead (no prefetch or parallel map, see `make_pretraining_dataset`):
  after every batch the producer thread snapshots the tf.data iterator state (file indices,
  record offsets, counters; no audio), and `get_state()` returns the snapshot taken after the
  last batch `__next__` returned. Blob: a zip of "identity.json" (checked on restore) and
  "iterator_state.pb" (a serialized variant TensorProto), about 0.5 KB per (corpus, language)
  source. State is per process: store each process's blob under its process index.
  """

  _IDENTITY, _STATE = "identity.json", "iterator_state.pb"

  def __init__(self, dataset: tf.data.Dataset, identity: dict[str, Any] | None = None,
               prefetch: int = 2):
    self._iterator = iter(dataset)
    self._identity = identity
    self._prefetch = prefetch
    self._position = _snapshot(self._iterator)  # state after the last batch handed out
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._thread: threading.Thread | None = None

  def __iter__(self) -> PipelineIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._prefetch <= 0:
      batch, self._position = _next_with_state(self._iterator)
      return batch
    if self._thread is None:
      self._queue, self._stop = queue.Queue(maxsize=self._prefetch), threading.Event()
      self._thread = threading.Thread(target=_produce, daemon=True,
                                      args=(self._iterator, self._queue, self._stop))
      self._thread.start()
    item = self._queue.get()
    if isinstance(item, BaseException):
      self.close()
      raise item
    batch, self._position = item
    return batch

  def close(self) -> None:
    """Stops the producer thread, drops what it prefetched and rewinds to the last position."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = self._queue = self._stop = None
      _restore(self._iterator, self._position)

  def __del__(self):
    if getattr(self, "_stop", None) is not None:  # let the producer thread end with us
      self._stop.set()

  def get_state(self) -> bytes:
    """The position after the last returned batch, as bytes (see the class docstring)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
      archive.writestr(self._IDENTITY, json.dumps(self._identity, sort_keys=True))
      archive.writestr(self._STATE, tf.io.serialize_tensor(self._position).numpy())
    return buffer.getvalue()

  def set_state(self, state: bytes) -> None:
    """Moves to the position in `state` (from `get_state` of an iterator over an equal stream)."""
    with zipfile.ZipFile(io.BytesIO(state)) as archive:
      saved = json.loads(archive.read(self._IDENTITY))
      blob = archive.read(self._STATE)
    if self._identity is not None and saved is not None and saved != self._identity:
      diff = {k: (saved.get(k), self._identity.get(k))
              for k in sorted(set(saved) | set(self._identity)) if saved.get(k) != self._identity.get(k)}
      raise StreamMismatchError(diff)
    self.close()
    self._position = tf.io.parse_tensor(blob, out_type=tf.variant)
    _restore(self._iterator, self._position)

  def save(self, directory: str | os.PathLike) -> str:
    """Writes `get_state()` to `directory`/input_pipeline_state.zip; returns the path."""
    tf.io.gfile.makedirs(os.fspath(directory))
    path = os.path.join(os.fspath(directory), "input_pipeline_state.zip")
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(self.get_state())
    return path

  def restore(self, directory: str | os.PathLike) -> None:
    """Reads the position written by `save(directory)`."""
    path = os.path.join(os.fspath(directory), "input_pipeline_state.zip")
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"no input pipeline state at {path}")
    with tf.io.gfile.GFile(path, "rb") as f:
      self.set_state(f.read())


def _snapshot(iterator) -> tf.Tensor:
  """The tf.data iterator's state as an in-memory variant tensor (what tf.train.Checkpoint saves)."""
  return iterator._serialize_to_tensors()["_STATE"]  # pylint: disable=protected-access


def _restore(iterator, state: tf.Tensor) -> None:
  iterator._restore_from_tensors({"_STATE": state})  # pylint: disable=protected-access


def _next_with_state(iterator) -> tuple[dict[str, np.ndarray], tf.Tensor]:
  batch = tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
  return batch, _snapshot(iterator)


def _produce(iterator, out: queue.Queue, stop: threading.Event) -> None:
  """Producer thread: puts (batch, state after it) into `out` until `stop` or an error."""
  while not stop.is_set():
    try:
      item = _next_with_state(iterator)
    except BaseException as e:  # StopIteration or a pipeline error: hand it to the consumer
      item = e
    while not stop.is_set():
      try:
        out.put(item, timeout=0.1)
        break
      except queue.Full:
        continue
    if isinstance(item, BaseException):
      return
