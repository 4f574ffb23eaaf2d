"""Pretraining input: tf.data over TFDS speech corpora, mixed by language with p ~ n^alpha.

One tf.data source per (corpus, language) split, each process reading a disjoint even slice of
every split (files reshuffled each epoch, no example shuffle buffer). Sources are mixed with
`choose_from_datasets` driven by choices drawn with stateless ops keyed by (seed, process,
element index); crops are stateless too, keyed by (seed, process, source, index in the source).
The dataset is sequential (no op runs ahead), so its iterator state is positions only, a few
hundred bytes per source; `PipelineIterator` prefetches in a thread and saves it exactly.

Batches (numpy-able dicts, local_batch = global_batch_size // process_count):
  waveform      float32 [local_batch, max_sample_size]  (zero after the utterance's end)
  padding_mask  bool    [local_batch, max_sample_size]  True = padded sample
  language_id   int32   [local_batch]  index into `resolve_sources(...)` languages (sorted)
  corpus_id     int32   [local_batch]  index into config.sources
  id            string  [local_batch]  utterance id, only with `keep_ids=True`
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import threading
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import sampling
from data_pipelines.features import SAMPLE_RATE, language_split_name, select_languages

# Bytes per stored sample when estimating hours from a split's size (for builds that record no
# hours), by the audio feature's encoding: "none" is an int64 varint list (1-3 bytes when >= 0,
# 10 when < 0: 5.5 on synthetic_speech; builds before features.audio_feature), "bytes" raw int16,
# "zlib" compressed raw int16 (features.audio_feature: 1.72 on synthetic_speech).
_BYTES_PER_SAMPLE = {"none": 5.5, "bytes": 2.0, "zlib": 1.72}
_NORMALIZE_EPS = 1e-5  # fairseq: F.layer_norm(wav, wav.shape), eps 1e-5
_CHOICE_STREAM, _CROP_STREAM, _FILE_STREAM = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything that determines the pretraining batches (two processes with equal configs agree)."""
  data_dir: str
  # (TFDS corpus name e.g. "common_voice" or "toy_speech/alpha", languages or None = all found).
  sources: tuple[tuple[str, tuple[str, ...] | None], ...]
  split: str = "train"
  alpha: float = 0.5
  max_sample_size: int = 320_000  # crop length in samples (20 s at 16 kHz)
  min_sample_size: int = 32_000  # shorter utterances are dropped (2 s)
  normalize: bool = True  # zero mean / unit variance over the full utterance, before the crop
  global_batch_size: int = 8
  seed: int = 0
  shuffle_files: bool = True  # reshuffled every epoch, deterministically from the seed
  interleave_cycle_length: int = 4  # files of one source read at once
  prefetch_batches: int = 2  # batches PipelineIterator prepares ahead in a thread (0: none)
  num_epochs: int | None = None  # None: repeat forever; 1: one pass (tests, evaluation)
  keep_ids: bool = False  # add "id" (utterance ids) to the batch

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any]) -> PipelineConfig:
    """From a dict or ml_collections.ConfigDict (`cfg.to_dict()`); lists become tuples."""
    values = dict(mapping)
    values["sources"] = tuple(
        (corpus, None if langs is None else tuple(langs)) for corpus, langs in values["sources"])
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Source:
  """One (corpus, language) split that the pipeline reads; ids index the batch's id features."""
  corpus: str
  language: str  # sanitised, as in the split name
  split_name: str
  hours: float
  num_examples: int
  corpus_id: int
  language_id: int
  weight: float


def split_hours(builder: tfds.core.DatasetBuilder, split_name: str) -> float:
  """Hours of audio in one split: `metadata["hours"][split_name]` if recorded, else from its bytes."""
  metadata = builder.info.metadata or {}
  recorded = metadata.get("hours", {})
  if split_name in recorded:
    return float(recorded[split_name])
  if split_name not in builder.info.splits:
    raise KeyError(f"{builder.info.full_name}: no split {split_name!r}; has "
                   f"{sorted(builder.info.splits.keys())}")
  # Tensor writes the encoding's value ("zlib"), Audio its name ("NONE").
  encoding = (builder.info.features["audio"].to_json_content().encoding or "none").lower()
  if encoding not in _BYTES_PER_SAMPLE:
    raise ValueError(f"{builder.info.full_name}: audio encoding {encoding!r} is not one of "
                     f"{sorted(_BYTES_PER_SAMPLE)}; record metadata['hours'] in the build")
  bytes_per_sample = _BYTES_PER_SAMPLE[encoding]
  return builder.info.splits[split_name].num_bytes / bytes_per_sample / SAMPLE_RATE / 3600


def load_builders(config: PipelineConfig) -> dict[str, tfds.core.DatasetBuilder]:
  """`{corpus: builder}` for every corpus of config.sources, read from config.data_dir."""
  return {corpus: tfds.builder(corpus, data_dir=config.data_dir) for corpus, _ in config.sources}


def resolve_sources(config: PipelineConfig,
                    builders: Mapping[str, tfds.core.DatasetBuilder] | None = None) -> list[Source]:
  """The (corpus, language) splits of `config`, with their hours and two-level weights."""
  builders = builders or load_builders(config)
  found = []  # (corpus_id, corpus, language, split_name, hours, num_examples)
  for corpus_id, (corpus, languages) in enumerate(config.sources):
    builder = builders[corpus]
    split_names = list(builder.info.splits.keys())
    chosen = select_languages(split_names, config.split, languages,
                              f"{corpus} in {config.data_dir}")
    for lang in chosen:
      split_name = language_split_name(config.split, lang)
      found.append((corpus_id, corpus, lang, split_name, split_hours(builder, split_name),
                    builder.info.splits[split_name].num_examples))
  keys = [(corpus, lang) for _, corpus, lang, *_ in found]
  if len(set(keys)) != len(keys):
    raise ValueError(f"config.sources lists a (corpus, language) twice: {keys}")
  weights = sampling.two_level_weights({(c, l): h for _, c, l, _, h, _ in found}, config.alpha)
  language_ids = {lang: i for i, lang in enumerate(sorted({lang for _, _, lang, *_ in found}))}
  return [Source(corpus=c, language=l, split_name=s, hours=h, num_examples=n, corpus_id=cid,
                 language_id=language_ids[l], weight=weights[(c, l)])
          for cid, c, l, s, h, n in found]


def process_split(split_name: str, num_examples: int, process_index: int,
                  process_count: int) -> str:
  """`"train_en[start:end]"`: this process's even slice (the first num_examples % process_count
  processes get one extra example, as `tfds.even_splits`); error if the slice is empty."""
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  end = start + base + (process_index < extra)
  if end == start:
    raise ValueError(
        f"split {split_name!r} has {num_examples} examples, fewer than the {process_count} "
        "processes: every process must read every language (sample_from_datasets cannot mix an "
        "empty source); drop this language or use fewer processes")
  return f"{split_name}[{start}:{end}]"


def read_split(builder: tfds.core.DatasetBuilder, split: str, *, shuffle_seed: int | None,
               cycle_length: int) -> tf.data.Dataset:
  """One pass over a (sub)split's TFRecord files: {"audio": int16 [samples], "id": string}.

  Sequential on purpose (no parallel or prefetching op, unlike `as_dataset`), so the iterator
  state is file positions only. With `shuffle_seed`, files come in a new seeded order each pass.
  """
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise ValueError(f"{builder.info.full_name}: stored as {builder.info.file_format}; the "
                     "pretraining pipeline reads TFRecord files only")
  instructions = [fi for fi in builder.info.splits[split].file_instructions if fi.take > 0]
  paths = tf.constant([os.fspath(fi.filename) for fi in instructions])
  skips = tf.constant([fi.skip for fi in instructions], tf.int64)
  takes = tf.constant([fi.take for fi in instructions], tf.int64)
  files = tf.data.Dataset.range(len(instructions))
  if shuffle_seed is not None:
    files = files.shuffle(len(instructions), seed=shuffle_seed, reshuffle_each_iteration=True)
  records = files.interleave(
      lambda j: tf.data.TFRecordDataset(paths[j]).skip(skips[j]).take(takes[j]),
      cycle_length=max(1, min(cycle_length, len(instructions))), block_length=1)
  features = tfds.decode.PartialDecoding({"audio": True, "id": True}).extract_features(
      builder.info.features)
  return records.map(features.deserialize_example)


def stream_key(seed: int, stream: int, *ids: int) -> np.ndarray:
  """A stateless-RNG key `[2] int64` for one random stream (choice, crop, files) of one source or
  process, well mixed from non-negative integers by numpy's SeedSequence."""
  return np.random.SeedSequence([seed, stream, *ids]).generate_state(2, np.uint64).view(np.int64)


def _fold_in(key: np.ndarray, index: tf.Tensor) -> tf.Tensor:
  """Key `[2] int64` of element `index` of the stream `key`."""
  return tf.random.experimental.stateless_fold_in(tf.constant(key), tf.cast(index, tf.int64))


def crop_and_pad(audio: tf.Tensor, key: tf.Tensor, *, max_sample_size: int,
                 normalize: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """int16 `[samples]` -> (float32 `[max_sample_size]`, padding mask bool `[max_sample_size]`).

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
  return wave, tf.range(max_sample_size) >= kept


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
                   source_index: int, *, process_index: int,
                   process_count: int) -> tf.data.Dataset:
  """This process's slice of one source: {"audio", "id", "source", "crop_key"}, long ones only.

  Infinite (files reshuffled each epoch) unless config.num_epochs is set; an infinite source with
  no utterance of at least min_sample_size samples raises instead of spinning forever.
  """
  split = process_split(source.split_name, source.num_examples, process_index, process_count)
  file_seed = int(stream_key(config.seed, _FILE_STREAM, process_index, source_index)[0]) % 2**31
  ds = read_split(builder, split, shuffle_seed=file_seed if config.shuffle_files else None,
                  cycle_length=config.interleave_cycle_length)
  ds = ds.filter(lambda ex: tf.shape(ex["audio"])[0] >= config.min_sample_size)
  ds = ds.repeat(config.num_epochs)
  crop_key = stream_key(config.seed, _CROP_STREAM, process_index, source_index)
  ds = ds.enumerate().map(lambda k, ex: {
      "audio": ex["audio"], "id": ex["id"], "source": tf.constant(source_index, tf.int32),
      "crop_key": _fold_in(crop_key, k)})
  if config.num_epochs is None:
    ds = ds.concatenate(_failing_dataset(ds.element_spec, (
        f"{source.corpus} {source.split_name} (process {process_index} of {process_count}) has "
        f"no utterance of at least min_sample_size={config.min_sample_size} samples")))
  return ds


def mix_sources(datasets: Sequence[tf.data.Dataset], weights: Sequence[float], *, seed: int,
                process_index: int, stop_on_empty: bool = True) -> tf.data.Dataset:
  """Element i comes from source j ~ Categorical(weights), drawn with key (seed, process, i).

  `choose_from_datasets` with a stateless choice stream: the draws depend only on the seed, the
  process and the element index, so the mix is reproducible and its iterator state is a counter.
  """
  logits = tf.math.log(tf.constant([weights], tf.float64))
  key = stream_key(seed, _CHOICE_STREAM, process_index)
  choices = tf.data.Dataset.counter().map(
      lambda i: tf.random.stateless_categorical(logits, 1, seed=_fold_in(key, i))[0, 0])
  return tf.data.Dataset.choose_from_datasets(datasets, choices,
                                              stop_on_empty_dataset=stop_on_empty)


def make_pretraining_dataset(config: PipelineConfig, *, process_index: int,
                             process_count: int) -> tf.data.Dataset:
  """Batches of cropped waveforms for this process (see the module docstring for the dict).

  Sequential, without prefetch: iterate it through `PipelineIterator` (prefetch thread, exact
  state), or add `.prefetch()` yourself when the position need not be saved.
  """
  if config.global_batch_size % process_count:
    raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by "
                     f"process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if config.min_sample_size <= 0 or config.max_sample_size <= 0 or config.seed < 0:
    raise ValueError(f"expected min_sample_size > 0, max_sample_size > 0 and seed >= 0; found "
                     f"{config.min_sample_size}, {config.max_sample_size}, {config.seed}")
  builders = load_builders(config)
  sources = resolve_sources(config, builders)
  datasets = [source_dataset(config, builders[s.corpus], s, i, process_index=process_index,
                             process_count=process_count) for i, s in enumerate(sources)]
  mixed = mix_sources(datasets, [s.weight for s in sources], seed=config.seed,
                      process_index=process_index, stop_on_empty=config.num_epochs is None)
  language_ids = tf.constant([s.language_id for s in sources], tf.int32)
  corpus_ids = tf.constant([s.corpus_id for s in sources], tf.int32)

  def process(ex):
    wave, mask = crop_and_pad(ex["audio"], ex["crop_key"], max_sample_size=config.max_sample_size,
                              normalize=config.normalize)
    out = {"waveform": wave, "padding_mask": mask,
           "language_id": tf.gather(language_ids, ex["source"]),
           "corpus_id": tf.gather(corpus_ids, ex["source"])}
    if config.keep_ids:
      out["id"] = ex["id"]
    return out

  ds = mixed.map(process).batch(config.global_batch_size // process_count, drop_remainder=True)
  return ds.with_options(_sequential_options())


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
      raise ValueError(f"input pipeline state was saved for a different stream; (saved, current) "
                       f"differ in {diff}")
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


def make_pretraining_iterator(config: PipelineConfig, *, process_index: int,
                              process_count: int) -> PipelineIterator:
  """`PipelineIterator` over `make_pretraining_dataset(config, ...)`, prefetching in a thread."""
  return PipelineIterator(
      make_pretraining_dataset(config, process_index=process_index, process_count=process_count),
      stream_identity(config, process_index=process_index, process_count=process_count),
      prefetch=config.prefetch_batches)


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
