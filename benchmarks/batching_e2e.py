"""The batching model against an end-to-end run: real corpora drawn from length profiles, the real loop.

  python -m benchmarks.batching_e2e [--profiles=common_voice,babel] [--steps=30] [--preset=tiny]

`benchmarks.batching` models the gain of duration buckets over fixed crops: measured CPU step time
per crop shape, weighted by simulated bucket draws. Here, for each length profile
(`data_pipelines/length_profiles.py`), utterance durations are drawn from it and written as WAV
files, built into a TFDS corpus by the real `audio_manifest` builder, and pretrained on by the real
loop (`training.loop.train_and_evaluate`, log_every=1) twice:
  old   every utterance cut or padded to --crop_seconds (20 s), fairseq's trimmed masks
        (objective.require_same_masks=true), batch_seconds / crop rows;
  crop  duration buckets (--buckets, crop mode), per-row masks: the new default.
Measured: real (unpadded) audio-seconds per CPU-second of the process (all threads: the step, the
input pipeline, logging), over the logged steps except the first of each crop shape (its compile
and the pipeline's start). Beside it, in the same process, the model of `benchmarks.batching` for
the same preset, settings and the built corpus's own lengths. Writes
benchmarks/results/batching_e2e_cpu.json (`--out`).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

from absl import app, flags
import jax
import numpy as np

from benchmarks import batching, provenance
from data_pipelines import buckets as buckets_lib
from data_pipelines import length_profiles
from data_pipelines.features import SAMPLE_RATE

# The shared settings (--buckets, --batch_seconds, --crop_seconds, --min_seconds, --preset, --reps)
# are benchmarks.batching's flags.
_PROFILES = flags.DEFINE_list("profiles", ["common_voice", "babel"], "Length profiles to run.")
_CORPUS_UTTERANCES = flags.DEFINE_integer("corpus_utterances", 400, "Utterances per built corpus.")
_STEPS = flags.DEFINE_integer("steps", 30, "Measured steps per run (plus one per crop shape).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch directory (default: a new temporary one).")
_OUT = flags.DEFINE_string("out", "batching_e2e_cpu.json", "Results file under benchmarks/results/.")

LANGUAGE = "en"  # one language: the profile's lengths, nothing else mixed in


def write_corpus(lengths: np.ndarray, manual_dir: str, seed: int = 0) -> None:
  """One 16 kHz int16 WAV per length (samples) and manual_dir/manifest.tsv listing them as train
  utterances of LANGUAGE: a tone plus noise (the step's cost does not depend on the content)."""
  import soundfile as sf
  os.makedirs(os.path.join(manual_dir, "clips"), exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = ["path\tlanguage\tsplit"]
  for i, n in enumerate(lengths):
    t = np.arange(int(n)) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * (150 + 10 * (i % 30)) * t) + 0.05 * rng.standard_normal(int(n))
    name = f"clips/{i:05d}.wav"
    sf.write(os.path.join(manual_dir, name), wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    rows.append(f"{name}\t{LANGUAGE}\ttrain")
  with open(os.path.join(manual_dir, "manifest.tsv"), "w") as f:
    f.write("\n".join(rows) + "\n")


def build_corpus(manual_dir: str, data_dir: str, name: str) -> str:
  """Builds manual_dir's manifest with the audio_manifest builder as config `name`, keeping every
  utterance of 0.1 s and up (the pipeline's min_sample_size drops, as in training); returns the
  corpus name the pipeline reads, audio_manifest/<name>."""
  import tensorflow_datasets as tfds
  from data_pipelines.corpora import AudioManifest
  config = dataclasses.replace(AudioManifest.BUILDER_CONFIGS[0], name=name, num_workers=2,
                               min_duration_s=0.1)
  builder = AudioManifest(config=config, data_dir=data_dir)
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return f"audio_manifest/{name}"


def run_config(preset: str, data_dir: str, corpus: str, batching_mode: str, num_steps: int, *,
               batch_seconds: float, bucket_seconds: list[float], crop_samples: int,
               min_samples: int):
  """The pretraining config of one end-to-end run: `batching.step_config(preset)` (the step the
  model times), one source, a log line per step, no eval; batching_mode "old" (fixed crops,
  trimmed masks) or "crop" (duration buckets in crop mode, per-row masks)."""
  c = batching.step_config(preset)
  c.train.update(num_steps=num_steps, log_every=1, eval_every=0, checkpoint_every=10**6)
  c.data.update(data_dir=data_dir, sources=[[corpus, None]], max_sample_size=crop_samples,
                min_sample_size=min_samples, batch_seconds=batch_seconds)
  if batching_mode == "old":
    c.objective.require_same_masks = True
  elif batching_mode == "crop":
    c.data.update(bucket_seconds=list(bucket_seconds), bucket_mode="crop")
  else:
    raise ValueError(f"batching_mode: expected 'old' or 'crop', found {batching_mode!r}")
  return c


def measured_rate(history: list[dict[str, Any]]) -> dict[str, Any]:
  """Real audio per process CPU second over a log_every=1 run's steps, leaving out the first step
  of each crop shape (its compile; the first step also starts the input pipeline).

  history: the loop's logged rows, one per step; a row's crop is its `bucket_share/<s>s` key with
  share 1 (the loop logs the fixed crop that way too)."""
  seen, kept, dropped = set(), [], []
  for row in (r for r in history if "cpu_seconds_per_step" in r):
    crops = [k for k, v in row.items() if k.startswith("bucket_share/") and v == 1.0]
    if len(crops) != 1:
      raise ValueError(f"step {row['step']}: expected one crop shape per logged step (log_every=1),"
                       f" found shares {[k for k in row if k.startswith('bucket_share/')]}")
    crop = crops[0]
    (kept if crop in seen else dropped).append(row)
    seen.add(crop)
  if not kept:
    raise ValueError(f"no step left to measure: {len(dropped)} steps, each the first of its shape")
  real = sum(r["real_audio_seconds_per_step"] for r in kept)
  cpu = sum(r["cpu_seconds_per_step"] for r in kept)
  wall = sum(1 / r["steps_per_second"] for r in kept)
  computed = sum(r["real_audio_seconds_per_step"] / max(1 - r["padding_fraction"], 1e-9)
                 for r in kept)
  return dict(steps=len(kept), first_steps_left_out=len(dropped),
              left_out_cpu_seconds=sum(r["cpu_seconds_per_step"] for r in dropped),
              real_audio_seconds=real, cpu_seconds=cpu, wall_seconds=wall,
              padding=1 - real / computed, rate=real / cpu, wall_rate=real / wall)


def run_e2e(config, workdir: str) -> dict[str, Any]:
  """One pretraining run of `config` in `workdir` by the real loop; its measured rate and the
  whole run's process CPU seconds (compiles, pipeline start and checkpoint included)."""
  from xlsr_jax.training.loop import train_and_evaluate
  start = time.process_time()
  result = train_and_evaluate(config, workdir)
  total = time.process_time() - start
  out = measured_rate(result["history"])
  out["run_cpu_seconds"] = total
  return out


def used_buckets(lengths: np.ndarray, spec: buckets_lib.BucketSpec, min_samples: int) -> list[int]:
  """The buckets (indices into spec) that crop mode puts any of `lengths` [utterances] into."""
  crop_spec = buckets_lib.BucketSpec(spec.lengths, spec.batch_sizes, "crop", min_samples)
  index = buckets_lib.assign(lengths[lengths >= min_samples], crop_spec)
  return sorted(int(b) for b in np.unique(index) if 0 <= b < len(spec.lengths))


def model_prediction(lengths: np.ndarray, spec: buckets_lib.BucketSpec, crop_samples: int,
                     min_samples: int, batch_seconds: float, preset: str, reps: int,
                     timings: dict) -> dict[str, dict]:
  """`benchmarks.batching`'s model for old and crop batching of `lengths`; times (into `timings`,
  shared across profiles) every crop shape the model needs that is not there yet."""
  shapes = {(crop_samples, batching.old_rows(batch_seconds, crop_samples))}
  shapes |= {(spec.lengths[b], spec.batch_sizes[b]) for b in used_buckets(lengths, spec, min_samples)}
  for crop, rows in sorted(shapes - set(timings)):
    timings[(crop, rows)] = batching.step_seconds(preset, crop, rows, reps)
    print(f"  model: step {preset} [{rows} x {crop / SAMPLE_RATE:g} s]: "
          f"{timings[(crop, rows)]:.2f} CPU s", flush=True)
  result = batching.evaluate_profile(lengths, spec, crop_samples, min_samples, timings, seed=7,
                                     batch_seconds=batch_seconds, modes=("crop",))
  return {mode: {k: float(v) for k, v in r.items()} for mode, r in result.items()}


def run_profile(name: str, workdir: str, *, utterances: int, steps: int, preset: str, reps: int,
                bucket_seconds: list[float], batch_seconds: float, crop_samples: int,
                min_samples: int, timings: dict, seed: int = 0) -> dict[str, Any]:
  """Materialise a corpus from profile `name`, run old and crop batching end to end, and the model
  on the built corpus's lengths: {corpus, measured, model, ratios}."""
  lengths = length_profiles.draw(name, utterances, np.random.default_rng(seed))
  manual_dir, data_dir = os.path.join(workdir, name, "manual"), os.path.join(workdir, "tfds")
  start = time.perf_counter()
  write_corpus(lengths, manual_dir, seed)
  corpus = build_corpus(manual_dir, data_dir, name)
  built = batching.corpus_lengths(data_dir, corpus)
  print(f"{name}: built {corpus} ({len(built)} utterances, {built.sum() / SAMPLE_RATE / 3600:.2f} h)"
        f" in {time.perf_counter() - start:.0f} s", flush=True)
  spec = buckets_lib.make_spec(bucket_seconds, batch_seconds, min_sample_size=min_samples)
  model = model_prediction(built, spec, crop_samples, min_samples, batch_seconds, preset, reps,
                           timings)
  measured = {}
  for mode in ("old", "crop"):
    shapes = 1 if mode == "old" else len(used_buckets(built, spec, min_samples))
    config = run_config(preset, data_dir, corpus, mode, steps + shapes, batch_seconds=batch_seconds,
                        bucket_seconds=bucket_seconds, crop_samples=crop_samples,
                        min_samples=min_samples)
    measured[mode] = run_e2e(config, os.path.join(workdir, name, f"run_{mode}"))
    print(f"  measured {mode}: {measured[mode]['rate']:.2f} real audio s per CPU s over "
          f"{measured[mode]['steps']} steps (padding {measured[mode]['padding']:.3f})", flush=True)
  return dict(
      corpus=dict(name=corpus, utterances=int(len(built)), hours=float(built.sum() / SAMPLE_RATE / 3600),
                  median_seconds=float(np.median(built) / SAMPLE_RATE),
                  under_min_share=float(np.mean(built < min_samples))),
      measured=measured, model=model,
      measured_ratio=measured["crop"]["rate"] / measured["old"]["rate"],
      model_ratio=model["crop"]["rate"] / model["old"]["rate"])


def main(_):
  if jax.device_count() != 1:
    raise SystemExit(f"expected one CPU device, found {jax.device_count()} (unset XLA_FLAGS' "
                     f"--xla_force_host_platform_device_count)")
  meta = provenance.provenance()
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="batching_e2e_")
  bucket_seconds = [float(b) for b in batching._BUCKETS.value]
  settings = dict(preset=batching._PRESET.value, batch_seconds=batching._BATCH_SECONDS.value,
                  bucket_seconds=bucket_seconds, crop_seconds=batching._CROP.value,
                  min_seconds=batching._MIN.value, steps=_STEPS.value, model_reps=batching._REPS.value,
                  corpus_utterances=_CORPUS_UTTERANCES.value)
  print(f"# benchmarks.batching_e2e  {settings}  workdir {workdir}", flush=True)
  timings: dict = {}
  profiles = {}
  for name in _PROFILES.value:
    profiles[name] = run_profile(
        name, workdir, utterances=_CORPUS_UTTERANCES.value, steps=_STEPS.value,
        preset=batching._PRESET.value, reps=batching._REPS.value, bucket_seconds=bucket_seconds,
        batch_seconds=batching._BATCH_SECONDS.value,
        crop_samples=int(batching._CROP.value * SAMPLE_RATE),
        min_samples=int(batching._MIN.value * SAMPLE_RATE), timings=timings)
    p = profiles[name]
    print(f"{name}: measured x old {p['measured_ratio']:.2f}, model x old {p['model_ratio']:.2f}",
          flush=True)
  path = provenance.write_results(_OUT.value, dict(
      settings=settings, profiles=profiles,
      model_step_seconds={f"{rows}x{crop / SAMPLE_RATE:g}s": t
                          for (crop, rows), t in sorted(timings.items())},
      load_avg_end=list(os.getloadavg())),
      notes="measured: the real loop on a corpus built from each assumed length profile; model: "
            "benchmarks.batching's measured step times weighted by simulated bucket draws over the "
            "same corpus's lengths, in the same process", meta=meta)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
