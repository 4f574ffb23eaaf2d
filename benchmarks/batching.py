"""Fixed-crop batching against duration buckets: padding, masked share, real audio per CPU second.

  python -m benchmarks.batching                                    # documented corpus profiles
  python -m benchmarks.batching --data_dir=data/tensorflow_datasets  # + the built synthetic corpus

For each length profile (utterance durations drawn from a corpus's documented distribution, or
read from a built corpus's length index), at the XLS-R settings (min 2 s, 20 s crops, mask_prob
0.65, span 10, batch_seconds of audio per step):
  old   every utterance cut or padded to 20 s, the span mask trimmed to the batch's minimum;
  crop  buckets (--buckets), each utterance cropped to the longest bucket it fills, per-row masks;
  pad   the same buckets, each utterance padded up to the shortest bucket it fits in.
Columns: padding (padded share of the samples computed), used (share of each kept utterance's
audio that a step sees: crops discard the tail), masked share of each row's real frames (mean and
lowest row), and real audio-seconds per CPU-second of step time, from the measured CPU time
(process, all threads: little changed by other jobs) of the real train step (--preset) at each
crop, weighted by how often the profile uses it; `x old` is that rate over the old batching's. The masks are the step's own (`compute_span_mask`).
"""
from __future__ import annotations

import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from data_pipelines import buckets as buckets_lib
from data_pipelines import length_profiles
from data_pipelines.features import SAMPLE_RATE
from xlsr_jax.objectives import masking

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS dir with a built synthetic_speech corpus.")
_CORPUS = flags.DEFINE_string("corpus", "synthetic_speech/default", "Built corpus to profile.")
_BUCKETS = flags.DEFINE_list("buckets", ["2", "4", "8", "12", "16", "20"], "Bucket seconds.")
_BATCH_SECONDS = flags.DEFINE_float("batch_seconds", 64.0, "Audio seconds per step (one CPU).")
_CROP = flags.DEFINE_float("crop_seconds", 20.0, "The old fixed crop (XLS-R: 20 s).")
_MIN = flags.DEFINE_float("min_seconds", 2.0, "Utterances below are dropped (XLS-R: 2 s).")
_PRESET = flags.DEFINE_string("preset", "tiny", "Model preset whose CPU step is timed.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed steps per crop (median).")
_UTTERANCES = flags.DEFINE_integer("utterances", 20_000, "Durations drawn per documented profile.")

def corpus_lengths(data_dir: str, corpus: str) -> np.ndarray:
  """Every train-split utterance length of a built corpus (the pipeline's length index)."""
  import tensorflow_datasets as tfds
  from data_pipelines import input_pipeline as ip
  builder = tfds.builder(corpus, data_dir=data_dir)
  names = [s for s in builder.info.splits.keys() if s.startswith("train_")]
  return np.concatenate([ip.split_lengths(builder, s) for s in names]).astype(np.int64)


def masked_shares(lengths: np.ndarray, crop: int, same: bool, seed: int) -> np.ndarray:
  """Each row's masked share of its real frames under the step's masking, for rows of `lengths`
  (samples, already cut to `crop`) batched in their given order; float [rows]."""
  frames = masking.num_feature_frames(np.asarray(lengths, np.int64))
  width = masking.num_feature_frames(int(crop))
  rows = len(lengths)
  fn = jax.jit(lambda key, lens: masking.compute_span_mask(
      key, lens, width, mask_prob=0.65, mask_length=10, min_masks=2, require_same_masks=same))
  batch = 64
  out = []
  for start in range(0, rows, batch):
    lens = frames[start:start + batch]
    padded = np.pad(lens, (0, batch - len(lens)))
    mask = np.asarray(fn(jax.random.key(seed + start), jnp.asarray(padded, jnp.int32)))
    out.append(mask[:len(lens)].sum(-1) / np.maximum(lens, 1))
  return np.concatenate(out)


def step_config(preset: str):
  """The default pretraining config at `preset`, 100 negatives, no dropout: the step the model times
  (and the end-to-end runs of benchmarks.batching_e2e train)."""
  from xlsr_jax.training.config_defaults import get_default_config
  config = get_default_config()
  config.model.preset = preset
  config.objective.num_negatives = 100
  for field in common.DROPOUT_FIELDS:
    config.model[field] = 0.0
  return config


def step_seconds(preset: str, crop: int, rows: int, reps: int) -> float:
  """Median CPU time (this process, all threads) of the real train step (one CPU device) on
  [rows, crop] audio: CPU seconds, not wall, so that other jobs on the machine change it little."""
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.state import build_trainer
  config = step_config(preset)
  trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), crop)
  state = trainer.create_state()
  wave = np.random.default_rng(0).standard_normal((rows, crop)).astype(np.float32)
  batch = {"waveform": jax.device_put(wave), "lengths": jax.device_put(np.full((rows,), crop, np.int32))}
  times = []
  for _ in range(reps + 1):  # the first call compiles
    start = time.process_time()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.process_time() - start)
  return float(np.median(times[1:]))


def old_rows(batch_seconds: float, crop_old: int) -> int:
  """Rows per step of the old fixed-crop batching: batch_seconds of audio in crops of crop_old."""
  return max(1, int(round(batch_seconds * SAMPLE_RATE / crop_old)))


def evaluate_profile(lengths: np.ndarray, spec: buckets_lib.BucketSpec, crop_old: int,
                     min_samples: int, timings: dict, seed: int, batch_seconds: float,
                     modes: tuple[str, ...] = ("crop", "pad")) -> dict[str, dict]:
  """Padding, used audio, masked share and real audio per CPU second for old and each of `modes`;
  `timings`: CPU seconds per step by (crop, rows), for the old shape and every bucket used."""
  kept = lengths[lengths >= min_samples]
  rng = np.random.default_rng(seed)
  rows_old = old_rows(batch_seconds, crop_old)
  out = {}
  # Old: every utterance cut or padded to crop_old, batches in arrival order, masks trimmed.
  sample = rng.permutation(kept)[:rows_old * max(1, 4096 // rows_old)]
  cut = np.minimum(sample, crop_old)
  shares = masked_shares(cut, crop_old, True, seed)
  real_per_step = cut.mean() * rows_old / SAMPLE_RATE
  out["old"] = dict(padding=1 - cut.mean() / crop_old, used=float(np.mean(cut / sample)),
                    masked=shares.mean(), masked_min=shares.min(),
                    rate=real_per_step / timings[(crop_old, rows_old)])
  for mode in modes:
    s = buckets_lib.BucketSpec(spec.lengths, spec.batch_sizes, mode, min_samples)
    index = buckets_lib.assign(kept, s)
    counts = buckets_lib.bucket_counts(kept, s)
    probs = buckets_lib.step_probabilities({"all": 1.0}, {"all": counts / counts.sum()}, s)
    pad = used = real_time = real_audio = 0.0
    all_shares = []
    for b, (crop, rows) in enumerate(zip(s.lengths, s.batch_sizes)):
      members = kept[index == b]
      if not len(members) or probs[b] == 0:
        continue
      cut = np.minimum(members, crop)
      pad += probs[b] * rows * (crop - cut.mean())
      used += probs[b] * rows * float(np.mean(cut / members))
      real_audio += probs[b] * rows * cut.mean() / SAMPLE_RATE
      real_time += probs[b] * timings[(crop, rows)]
      all_shares.append(masked_shares(rng.permutation(cut)[:512], crop, False, seed + b))
    computed = float(np.sum(probs * np.array(s.batch_sizes) * np.array(s.lengths)))
    shares = np.concatenate(all_shares)
    out[mode] = dict(padding=pad / computed, used=used / float(np.sum(probs * np.array(s.batch_sizes))),
                     masked=shares.mean(), masked_min=shares.min(), rate=real_audio / real_time)
  return out


def main(_):
  print(f"# benchmarks.batching  machine: {common.machine_load()}  jax {jax.__version__} "
        f"on {jax.devices()[0].platform}")
  crop_old = int(_CROP.value * SAMPLE_RATE)
  min_samples = int(_MIN.value * SAMPLE_RATE)
  spec = buckets_lib.make_spec([float(b) for b in _BUCKETS.value], _BATCH_SECONDS.value,
                               min_sample_size=min_samples)
  rng = np.random.default_rng(0)
  profiles = {name: length_profiles.draw(name, _UTTERANCES.value, rng)
              for name in length_profiles.NAMES}
  if _DATA_DIR.value:
    profiles = {_CORPUS.value: corpus_lengths(os.path.expanduser(_DATA_DIR.value), _CORPUS.value),
                **profiles}
  shapes = {(crop_old, old_rows(_BATCH_SECONDS.value, crop_old))}
  shapes |= set(zip(spec.lengths, spec.batch_sizes))
  timings = {}
  for crop, rows in sorted(shapes):
    timings[(crop, rows)] = step_seconds(_PRESET.value, crop, rows, _REPS.value)
    print(f"  step {_PRESET.value} [{rows} x {crop / SAMPLE_RATE:g} s]: "
          f"{timings[(crop, rows)] * 1e3:.0f} ms", flush=True)
  print(f"\nbuckets {list(_BUCKETS.value)} s, {_BATCH_SECONDS.value:g} s of audio per step, old crop "
        f"{_CROP.value:g} s, min {_MIN.value:g} s, preset {_PRESET.value} on one CPU device")
  print(f"{'profile':<26}{'batching':<9}{'padding':>9}{'used':>7}{'masked':>8}{'lowest':>8}"
        f"{'real s/CPU s':>13}{'x old':>7}")
  for name, lengths in profiles.items():
    result = evaluate_profile(lengths, spec, crop_old, min_samples, timings, seed=7,
                              batch_seconds=_BATCH_SECONDS.value)
    for mode, r in result.items():
      print(f"{name:<26}{mode:<9}{r['padding']:>9.3f}{r['used']:>7.2f}{r['masked']:>8.3f}"
            f"{r['masked_min']:>8.3f}{r['rate']:>13.2f}{r['rate'] / result['old']['rate']:>7.2f}")
  print("\nprofile sources:")
  for name, (_, _, source) in length_profiles.PROFILES.items():
    print(f"  {name}: {source}")
  print(f"  xlsr_mix: the five above, utterances drawn with corpus weight hours^0.5 of "
        f"{length_profiles.XLSR_HOURS}")


if __name__ == "__main__":
  app.run(main)
