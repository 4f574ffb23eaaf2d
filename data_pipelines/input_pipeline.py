"""Pretraining input: tf.data over TFDS speech corpora, mixed by language with p ~ n^alpha.

One tf.data source per (corpus, language) split (data_pipelines/sources.py), each process reading a disjoint even slice of
every split (files reshuffled each epoch, no example shuffle buffer). Sources are mixed with
`choose_from_datasets` driven by choices drawn with stateless ops keyed by (seed, process,
element index); crops are stateless too, keyed by (seed, process, source, index in the source).
The dataset is sequential (no op runs ahead), so its iterator state is positions only, a few
hundred bytes per source; `PipelineIterator` prefetches in a thread and saves it exactly.

With duration buckets (`bucket_lengths`, see data_pipelines/buckets.py) each step's batch comes
from one bucket drawn from a seed shared by every process (same shape on every host at every
step); a per-split index of utterance lengths (`split_lengths`, computed once and cached) assigns
utterances to buckets, and records outside a stream's bucket are skipped before decoding.

Batches (numpy-able dicts, local_batch = rows // process_count; rows and crop are the bucket's,
or global_batch_size and max_sample_size without buckets):
  waveform      float32 [local_batch, crop]  (zero after the utterance's end)
  lengths       int32   [local_batch]  real samples of each row (the rest is padding)
  language_id   int32   [local_batch]  index into `resolve_sources(...)` languages (sorted)
  corpus_id     int32   [local_batch]  index into config.sources + config.replay_sources
  bucket        int32   [local_batch]  the step's bucket index (0 without buckets)
  id            string  [local_batch]  utterance id, only with `keep_ids=True`
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import buckets as buckets_lib
from data_pipelines.features import SAMPLE_RATE
from data_pipelines.pipeline_config import PipelineConfig  # (re-exported: callers import it here)
from data_pipelines.pipeline_iterator import PipelineIterator
# Reading the splits (re-exported: callers import these from here too).
from data_pipelines.sources import (Source, load_builders, process_range, process_split,
                                    read_split, resolve_sources, split_lengths)

_NORMALIZE_EPS = 1e-5  # fairseq: F.layer_norm(wav, wav.shape), eps 1e-5
_CHOICE_STREAM, _CROP_STREAM, _FILE_STREAM, _BUCKET_STREAM = 1, 2, 3, 4


def stream_key(seed: int, stream: int, *ids: int) -> np.ndarray:
  """A stateless-RNG key `[2] int64` for one random stream (choice, crop, files) of one source or
  process, well mixed from non-negative integers by numpy's SeedSequence."""
  return np.random.SeedSequence([seed, stream, *ids]).generate_state(2, np.uint64).view(np.int64)


def _fold_in(key: np.ndarray, index: tf.Tensor) -> tf.Tensor:
  """Key `[2] int64` of element `index` of the stream `key`."""
  return tf.random.experimental.stateless_fold_in(tf.constant(key), tf.cast(index, tf.int64))


def crop_and_pad(audio: tf.Tensor, key: tf.Tensor, *, max_sample_size: int,
                 normalize: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """int16 `[samples]` -> (float32 `[max_sample_size]`, real samples int32 `[]`).

  Scales to [-1, 1), optionally normalises over the whole utterance, then takes a random window
  of max_sample_size samples (start drawn with `key`) or right-pads with zeros.
  """
  wave = tf.cast(audio, tf.float32) / 32768.0
  if normalize:
    mean, variance = tf.nn.moments(wave, axes=[0])
    wave = (wave - mean) * tf.math.rsqrt(variance + _NORMALIZE_EPS)
  length = tf.shape(wave)[0]
  excess = tf.maximum(length - max_sample_size, 0)
  start = tf.random.stateless_uniform([], seed=key, minval=0, maxval=excess + 1, dtype=tf.int32)
  wave = wave[start:start + max_sample_size]
  kept = tf.shape(wave)[0]
  wave = tf.ensure_shape(tf.pad(wave, [[0, max_sample_size - kept]]), [max_sample_size])
  return wave, kept


def _failing_dataset(element_spec, message: str) -> tf.data.Dataset:
  """A one-element dataset matching `element_spec` whose element raises InvalidArgumentError."""
  def empty(spec):
    shape = [0 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype) if spec.dtype != tf.string else tf.fill(shape, "")

  def fail(element):
    check = tf.debugging.Assert(False, [message])
    with tf.control_dependencies([check]):
      return tf.nest.map_structure(tf.identity, element)

  return tf.data.Dataset.from_tensors(tf.nest.map_structure(empty, element_spec)).map(fail)


def source_dataset(config: PipelineConfig, builder: tfds.core.DatasetBuilder, source: Source,
                   source_index: int, *, process_index: int, process_count: int,
                   keep: np.ndarray | None = None, bucket: int = 0) -> tf.data.Dataset:
  """This process's slice of one source: {"audio", "id", "source", "crop_key"}, long ones only.

  keep: bool [examples in the split] chooses the utterances of one bucket (skipped undecoded);
  bucket: the bucket's index, so each (source, bucket) stream has its own file order and crops.
  Infinite (files reshuffled each epoch) unless config.num_epochs is set; an infinite source with
  no utterance to give raises instead of spinning forever.
  """
  split = process_split(source.split_name, source.num_examples, process_index, process_count)
  file_seed = int(stream_key(config.seed, _FILE_STREAM, process_index, source_index,
                             bucket)[0]) % 2**31
  ds = read_split(builder, split, shuffle_seed=file_seed if config.shuffle_files else None,
                  cycle_length=config.interleave_cycle_length, keep=keep)
  if keep is None:
    ds = ds.filter(lambda ex: tf.shape(ex["audio"])[0] >= config.min_sample_size)
  ds = ds.repeat(config.num_epochs)
  crop_key = stream_key(config.seed, _CROP_STREAM, process_index, source_index, bucket)
  ds = ds.enumerate().map(lambda k, ex: {
      "audio": ex["audio"], "id": ex["id"], "source": tf.constant(source_index, tf.int32),
      "crop_key": _fold_in(crop_key, k)})
  if config.num_epochs is None:
    what = (f"bucket {bucket}" if keep is not None
            else f"min_sample_size={config.min_sample_size} samples")
    ds = ds.concatenate(_failing_dataset(ds.element_spec, (
        f"{source.corpus} {source.split_name} (process {process_index} of {process_count}) has "
        f"no utterance for {what}")))
  return ds


def mix_sources(datasets: Sequence[tf.data.Dataset], weights: Sequence[float], *, seed: int,
                process_index: int, stop_on_empty: bool = True, stream: int = 0
                ) -> tf.data.Dataset:
  """Element i comes from source j ~ Categorical(weights), drawn with key (seed, process, i).

  `choose_from_datasets` with a stateless choice stream: the draws depend only on the seed, the
  process and the element index, so the mix is reproducible and its iterator state is a counter.
  `stream` separates independent mixes (one per bucket).
  """
  choices = choice_stream(weights, stream_key(seed, _CHOICE_STREAM, process_index, stream))
  return tf.data.Dataset.choose_from_datasets(datasets, choices,
                                              stop_on_empty_dataset=stop_on_empty)


def choice_stream(weights: Sequence[float], key: np.ndarray) -> tf.data.Dataset:
  """Draw i ~ Categorical(weights) with key fold_in(key, i): int64 elements, a counter's state."""
  logits = tf.math.log(tf.constant([weights], tf.float64))
  return tf.data.Dataset.counter().map(
      lambda i: tf.random.stateless_categorical(logits, 1, seed=_fold_in(key, i))[0, 0])


@dataclasses.dataclass(frozen=True)
class BucketPlan:
  """How a bucketed run draws its batches, from the splits' length indexes (same on every host)."""
  spec: buckets_lib.BucketSpec
  step_probabilities: tuple[float, ...]  # P(step uses bucket b)
  shares: dict[tuple[str, str], tuple[float, ...]]  # f_s(b) per (corpus, language)
  dropped: dict[tuple[str, str], int]  # utterances too short for any bucket, per source
  kept: dict[tuple[str, str], int]

  def summary(self) -> dict[str, Any]:
    """JSON-able report: buckets (seconds, rows, step share), dropped and kept utterances."""
    return {
        "mode": self.spec.mode,
        "buckets": [{"seconds": n / SAMPLE_RATE, "rows": r, "step_probability": p}
                    for n, r, p in zip(self.spec.lengths, self.spec.batch_sizes,
                                       self.step_probabilities)],
        "dropped_utterances": int(sum(self.dropped.values())),
        "kept_utterances": int(sum(self.kept.values())),
        "dropped_by_source": {f"{c}/{l}": n for (c, l), n in self.dropped.items() if n}}


def plan_buckets(config: PipelineConfig, sources: Sequence[Source],
                 builders: Mapping[str, tfds.core.DatasetBuilder]
                 ) -> tuple[BucketPlan, dict[tuple[str, str], np.ndarray]]:
  """The bucket plan of `config` and each source's bucket index per utterance (-1 = dropped)."""
  spec = config.bucket_spec
  assignments, counts, dropped = {}, {}, {}
  for s in sources:
    index = buckets_lib.assign(split_lengths(builders[s.corpus], s.split_name), spec)
    key = (s.corpus, s.language)
    assignments[key] = index
    counts[key] = np.bincount(index[index >= 0], minlength=spec.num_buckets)
    dropped[key] = int(np.sum(index < 0))
  shares = buckets_lib.source_bucket_shares(counts)
  weights = {(s.corpus, s.language): s.weight for s in sources}
  probs = buckets_lib.step_probabilities(weights, shares, spec)
  plan = BucketPlan(spec=spec, step_probabilities=tuple(float(p) for p in probs),
                    shares={k: tuple(float(x) for x in v) for k, v in shares.items()},
                    dropped=dropped, kept={k: int(c.sum()) for k, c in counts.items()})
  return plan, assignments


def _check_args(config: PipelineConfig, process_index: int, process_count: int) -> None:
  rows = config.bucket_batch_sizes or (config.global_batch_size,)
  if any(r % process_count for r in rows):
    raise ValueError(f"batch sizes {rows} are not all divisible by process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if config.min_sample_size <= 0 or config.max_sample_size <= 0 or config.seed < 0:
    raise ValueError(f"expected min_sample_size > 0, max_sample_size > 0 and seed >= 0; found "
                     f"{config.min_sample_size}, {config.max_sample_size}, {config.seed}")
  if config.bucket_lengths and max(config.bucket_lengths) > config.max_sample_size:
    raise ValueError(f"bucket lengths {config.bucket_lengths} exceed max_sample_size "
                     f"{config.max_sample_size}")


def _to_batch(sources: Sequence[Source], crop: int, bucket: int, config: PipelineConfig):
  """Element {"audio", "source", "crop_key", "id"} -> one row of the batch dict (module doc)."""
  language_ids = tf.constant([s.language_id for s in sources], tf.int32)
  corpus_ids = tf.constant([s.corpus_id for s in sources], tf.int32)

  def row(ex):
    wave, length = crop_and_pad(ex["audio"], ex["crop_key"], max_sample_size=crop,
                                normalize=config.normalize)
    out = {"waveform": wave, "lengths": length,
           "language_id": tf.gather(language_ids, ex["source"]),
           "corpus_id": tf.gather(corpus_ids, ex["source"]),
           "bucket": tf.constant(bucket, tf.int32)}
    if config.keep_ids:
      out["id"] = ex["id"]
    return out
  return row


def make_pretraining_dataset(config: PipelineConfig, *, process_index: int,
                             process_count: int) -> tf.data.Dataset:
  """Batches of cropped waveforms for this process (see the module docstring for the dict).

  Sequential, without prefetch: iterate it through `PipelineIterator` (prefetch thread, exact
  state), or add `.prefetch()` yourself when the position need not be saved.
  """
  _check_args(config, process_index, process_count)
  builders = load_builders(config)
  sources = resolve_sources(config, builders)
  stop_on_empty = config.num_epochs is None
  if not config.bucket_lengths:
    datasets = [source_dataset(config, builders[s.corpus], s, i, process_index=process_index,
                               process_count=process_count) for i, s in enumerate(sources)]
    mixed = mix_sources(datasets, [s.weight for s in sources], seed=config.seed,
                        process_index=process_index, stop_on_empty=stop_on_empty)
    ds = mixed.map(_to_batch(sources, config.max_sample_size, 0, config)).batch(
        config.global_batch_size // process_count, drop_remainder=True)
    return ds.with_options(_sequential_options())

  plan, assignments = plan_buckets(config, sources, builders)
  per_bucket = []
  for b, (crop, rows) in enumerate(zip(config.bucket_lengths, config.bucket_batch_sizes)):
    streams, weights = [], []
    for i, s in enumerate(sources):
      key = (s.corpus, s.language)
      start, end = process_range(s.num_examples, process_index, process_count)
      keep = assignments[key] == b
      if plan.shares[key][b] == 0 or not keep[start:end].any():
        continue  # no utterance of this bucket in this process's slice of the source
      streams.append(source_dataset(config, builders[s.corpus], s, i, process_index=process_index,
                                    process_count=process_count, keep=keep, bucket=b))
      weights.append(s.weight * plan.shares[key][b])
    if not streams:
      if plan.step_probabilities[b] > 0:
        raise ValueError(f"process {process_index} of {process_count} has no utterance for bucket "
                         f"{crop / SAMPLE_RATE:g} s that other processes have; use fewer processes")
      streams, weights = [_failing_dataset(_ELEMENT_SPEC, f"bucket {b} is empty")], [1.0]
    mixed = mix_sources(streams, weights, seed=config.seed, process_index=process_index,
                        stop_on_empty=stop_on_empty, stream=1 + b)
    per_bucket.append(mixed.map(_to_batch(sources, crop, b, config)).batch(
        rows // process_count, drop_remainder=True))
  # The step's bucket: the same key on every process (no process index), so shapes agree.
  choices = choice_stream(plan.step_probabilities, stream_key(config.seed, _BUCKET_STREAM))
  ds = tf.data.Dataset.choose_from_datasets(per_bucket, choices, stop_on_empty_dataset=True)
  return ds.with_options(_sequential_options())


# What `source_dataset` yields (a placeholder stream for a bucket no step ever draws).
_ELEMENT_SPEC = {"audio": tf.TensorSpec([None], tf.int16), "id": tf.TensorSpec([], tf.string),
                 "source": tf.TensorSpec([], tf.int32), "crop_key": tf.TensorSpec([2], tf.int64)}


def _sequential_options() -> tf.data.Options:
  """Deterministic, and no op that runs ahead: the iterator state then holds positions only."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
  optimization = options.experimental_optimization
  for name in ("inject_prefetch", "map_parallelization", "map_and_batch_fusion",
               "filter_parallelization", "seq_interleave_prefetch"):
    setattr(optimization, name, False)
  return options


def stream_identity(config: PipelineConfig, *, process_index: int,
                    process_count: int) -> dict[str, Any]:
  """The settings that fix this process's batch stream (not paths or prefetch), as JSON values."""
  values = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in ("data_dir", "prefetch_batches")}
  values.update(process_index=process_index, process_count=process_count)
  return json.loads(json.dumps(values))


def make_pretraining_iterator(config: PipelineConfig, *, process_index: int,
                              process_count: int) -> PipelineIterator:
  """`PipelineIterator` over `make_pretraining_dataset(config, ...)`, prefetching in a thread."""
  return PipelineIterator(
      make_pretraining_dataset(config, process_index=process_index, process_count=process_count),
      stream_identity(config, process_index=process_index, process_count=process_count),
      prefetch=config.prefetch_batches)
