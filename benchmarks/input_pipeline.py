"""Input throughput in audio-seconds per second, per wall second and per CPU second (= per core).

  python -m benchmarks.input_pipeline                       # builds a toy corpus of 1-19 s clips
  python -m benchmarks.input_pipeline --data_dir=DIR --sources=synthetic_speech

(a) reading TFRecords of a built TFDS dataset (read + parse), and the whole pretraining pipeline
    (mix, normalise, crop, batch, prefetch thread; counts the unpadded audio it delivers);
(b) decoding and resampling raw files as a corpus build does (`audio_io.decode_audio` on WAV and
    FLAC files at 44.1 and 48 kHz, and 16 kHz WAV as the no-resampling baseline).
CPU seconds are the process's (all threads), so audio s / CPU s is the rate of one busy core.
"""
from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags, logging
import numpy as np
import soundfile as sf
import tensorflow as tf

from data_pipelines import audio_io
from data_pipelines import input_pipeline as ip
from data_pipelines.features import SAMPLE_RATE

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir with built corpora; default: "
                                "build the toy 'long' corpus into a temporary directory.")
_SOURCES = flags.DEFINE_list("sources", ["toy_speech/long"], "TFDS corpus names to mix.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Pipeline batches to time.")
_BATCH = flags.DEFINE_integer("global_batch_size", 8, "Utterances per batch (one process).")
_MAX = flags.DEFINE_integer("max_sample_size", 320_000, "Crop length (samples).")
_MIN = flags.DEFINE_integer("min_sample_size", 32_000, "Drop utterances below (samples).")
_FILE_SECONDS = flags.DEFINE_float("file_seconds", 30.0, "Length of each raw test file.")
_FILES = flags.DEFINE_integer("files", 8, "Raw files per format.")


class Meter:
  """Wall and process CPU time of a block, with the audio seconds it produced."""

  def __enter__(self) -> Meter:
    self.wall, self.cpu, self.audio_s = time.perf_counter(), time.process_time(), 0.0
    return self

  def __exit__(self, *exc) -> None:
    self.wall = time.perf_counter() - self.wall
    self.cpu = time.process_time() - self.cpu


def row(name: str, m: Meter) -> str:
  return (f"{name:<48} {m.audio_s:9.1f} {m.wall:7.2f} {m.cpu:7.2f} "
          f"{m.audio_s / m.wall:10.1f} {m.audio_s / m.cpu:10.1f}")


def bench_read(config: ip.PipelineConfig, passes: int) -> Meter:
  """`passes` passes over every source's split with `read_split` (read + parse only)."""
  builders = ip.load_builders(config)
  lengths = []
  for source in ip.resolve_sources(config, builders):
    ds = ip.read_split(builders[source.corpus], source.split_name, shuffle_seed=0,
                       cycle_length=config.interleave_cycle_length)
    lengths.append(iter(ds.repeat(passes).map(lambda ex: tf.shape(ex["audio"])[0]).batch(64)))
  with Meter() as m:
    for it in lengths:
      m.audio_s += sum(int(batch.numpy().sum()) for batch in it) / SAMPLE_RATE
  return m


def bench_pipeline(config: ip.PipelineConfig, batches: int) -> Meter:
  """`batches` batches of the full pipeline (after a first batch that builds the graph)."""
  it = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  next(it)
  with Meter() as m:
    for _ in range(batches):
      batch = next(it)
      m.audio_s += float(batch["lengths"].sum()) / SAMPLE_RATE  # real samples per row
  it.close()
  return m


def bench_decode(tmp: str, rate: int, fmt: str, subtype: str) -> Meter:
  """decode_audio (+ resampling to 16 kHz) on `_FILES` files of `_FILE_SECONDS` s at `rate`."""
  rng = np.random.default_rng(0)
  paths = []
  for i in range(_FILES.value):
    t = np.arange(int(_FILE_SECONDS.value * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 30 * i) * t) + 0.05 * rng.standard_normal(t.size)
    paths.append(os.path.join(tmp, f"clip{i}_{rate}.{fmt.lower()}"))
    sf.write(paths[-1], wave.astype(np.float32), rate, format=fmt, subtype=subtype)
  with Meter() as m:
    for path in paths:
      m.audio_s += audio_io.decode_audio(path).shape[0] / SAMPLE_RATE
  return m


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.ERROR)
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value
    if data_dir is None:
      from tests import toy_corpus  # only for the default toy corpus
      data_dir = os.path.join(tmp, "tfds")
      toy_corpus.build_toy_corpora(data_dir, num_shards=2, configs=("long",))
    config = ip.PipelineConfig(
        data_dir=data_dir, sources=tuple((s, None) for s in _SOURCES.value),
        max_sample_size=_MAX.value, min_sample_size=_MIN.value,
        global_batch_size=_BATCH.value, prefetch_batches=2)
    print(f"{os.cpu_count()} CPUs; sources {list(_SOURCES.value)} in {data_dir}")
    print(f"{'stage':<48} {'audio s':>9} {'wall s':>7} {'cpu s':>7} {'audio/wall':>10} "
          f"{'audio/cpu':>10}")
    print(row("(a) read + parse TFRecords (read_split)", bench_read(config, passes=5)))
    print(row(f"(a) pipeline: mix+normalise+crop+batch {_BATCH.value}x{_MAX.value}",
              bench_pipeline(config, _BATCHES.value)))
    print(row("(a) same, normalize=False",
              bench_pipeline(ip.PipelineConfig(**{**config.__dict__, "normalize": False}),
                             _BATCHES.value)))
    for rate, fmt, subtype in ((16_000, "WAV", "PCM_16"), (44_100, "WAV", "PCM_16"),
                               (48_000, "WAV", "PCM_16"), (44_100, "FLAC", "PCM_16"),
                               (48_000, "FLAC", "PCM_24")):
      label = f"(b) decode_audio {fmt} {subtype} {rate} Hz -> 16 kHz"
      print(row(label, bench_decode(tmp, rate, fmt, subtype)))


if __name__ == "__main__":
  app.run(main)
