"""The one-shot GPU check: parity on the GPU, then train-step speed per duration bucket.

  bash benchmarks/gpu_check.sh                  # on a GPU machine: installs, then runs this
  python -m benchmarks.gpu_check --dry_run      # on CPU: tiny preset, one bucket, a few steps

Made for a short loan of one GPU (about 15 minutes, a cold start included), so it must finish
within 8 minutes on an H100 and leave figures behind if it is cut off: every stage prints what it
measured as soon as it has it and rewrites the results file (--out, default
benchmarks/results/gpu_check_<card>.json) with everything so far.

Stages:
1. Environment: jax / jaxlib versions, the device, the cuDNN version jax reads, XLA_FLAGS (the
   GPU flags of training.devices.GPU_XLA_FLAGS are set before jax starts), commit, machine load.
2. Float32 parity against the Hugging Face reference on the GPU: the parity tests that compare
   against it (tests/test_parity_hf.py, tests/test_parity_loss.py -k match_reference: model
   outputs, logits, losses, gradients)
   run by pytest with JAX_PLATFORMS=cuda and float32 matmuls at full precision
   (JAX_DEFAULT_MATMUL_PRECISION=highest; the GPU's default would use TF32 for float32 matmuls).
3. bf16 parity against this CPU: the same parameters and batch (two rows, one half padded), the
   GPU in bfloat16 compute (float32 parameters, cuDNN attention) against the CPU in float32: the
   encoder's last hidden state (relative L2 error over real frames) and the validation loss (same
   masks and negatives: the draws come from one key), and the GPU in float32 against the CPU.
4. Train-step speed, for each preset (--presets) and duration bucket (longest first): bf16
   compute, float32 parameters and AdamW state, the remat policy of the preset's experiment
   (experiments/<preset>.py, e.g. xlsr_300m: dots_with_no_batch_dims; none without one), dropouts 0 (as benchmarks/train_step.py: one deterministic program; attention dropout
   would also leave cuDNN attention for the manual path), rows per bucket holding the same audio
   per step, sized to the card (AUDIO_SECONDS_PER_STEP for 80 GB, scaled by the card's memory),
   bucket by bucket (longest first) and within a bucket preset by preset. Per bucket: compile
   seconds, median step seconds, model FLOPs (training.flops, analytic), MFU against the card's
   peak dense bf16 (training.devices), real audio seconds per second (every row is a full crop of
   real audio), the program's memory (XLA's memory analysis: arguments, outputs, temporaries),
   the device's peak memory so far, and which attention kernel the compiled program holds. A bucket that runs out of memory
   is retried once with half the rows; a bucket that would not finish within --budget_s is skipped
   (and recorded as skipped).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time

from absl import app, flags

from xlsr_jax.training import devices as devices_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 16_000  # data_pipelines.features.SAMPLE_RATE (not imported: it pulls in TFDS)

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "CPU dry run: tiny preset, one 1 s bucket, 2 rows, "
                             "a few steps, no pytest stage (the test suite runs this).")
_PRESETS = flags.DEFINE_list("presets", ["xlsr_300m", "base"], "Presets to time (in this order).")
_BUCKETS = flags.DEFINE_list("bucket_seconds", ["20", "10", "5"],
                             "Duration buckets (crop seconds) to time, longest first.")
_OUT = flags.DEFINE_string("out", "", "Results file (default benchmarks/results/gpu_check_<card>.json).")
_BUDGET = flags.DEFINE_float("budget_s", 380.0, "Wall seconds (from the start of this program) "
                             "after which no further bucket is started.")
_TIME_S = flags.DEFINE_float("time_s", 3.0, "Seconds of timed steps per bucket (at least 3 steps).")
_PYTEST_TIMEOUT = flags.DEFINE_integer("pytest_timeout_s", 120, "Limit of the float32 parity stage.")
_PARITY_PRESET = flags.DEFINE_string("parity_preset", "base", "Preset of the bf16 parity stage.")

# Audio per step on an 80 GB card (scaled by the card's memory): 32 rows of 20 s. The nearest
# measured figure: the ahead-of-time TPU plan of xlsr_300m (benchmarks/results/
# plan_xlsr_300m_v5p-64_memory.json: same remat policy, bf16, 20 rows of 20 s per chip) needs
# 26 GB of temporaries, about 1.3 GB per row with XLA attention; cuDNN attention keeps no
# [frames, frames] probabilities, so 32 rows should stay well under 80 GB. base (no remat) saves
# every activation of 12 layers 768 wide, about as much per row. Out of memory: retried at half.
AUDIO_SECONDS_PER_STEP = {"base": 640.0, "xlsr_300m": 640.0, "tiny": 2.0}
# bf16-vs-CPU tolerances: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 per value),
# compounded over 12 layers; float32 on the GPU at full precision differs by summation order.
BF16_HIDDEN_RTOL, BF16_LOSS_RTOL = 5e-2, 2e-2
F32_HIDDEN_RTOL, F32_LOSS_RTOL = 1e-4, 1e-4


def log(message: str) -> None:
  print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Results:
  """The results file, rewritten whole after every addition (a cut-off run keeps what it had)."""

  def __init__(self, path: str, header: dict):
    self.path, self.data = path, dict(header)
    self.write()

  def set(self, key: str, value) -> None:
    self.data[key] = value
    self.write()

  def append(self, key: str, value) -> None:
    self.data.setdefault(key, []).append(value)
    self.write()

  def write(self) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1, default=str)
    os.replace(tmp, self.path)


def card_name(device) -> str:
  """A file-name-safe name of the device kind: 'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3'."""
  return re.sub(r"[^a-z0-9]+", "_", device.device_kind.lower()).strip("_") or device.platform


def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          timeout=10).stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown (no git)"


def rows_for(preset: str, bucket_s: float, hbm_bytes: float | None) -> int:
  """Rows of a bucket: the preset's audio per step on an 80 GB card, scaled to `hbm_bytes`, in
  crops of `bucket_s`; a multiple of 8 on a GPU (2 at least)."""
  audio = AUDIO_SECONDS_PER_STEP[preset] * ((hbm_bytes or 80e9) / 80e9)
  rows = audio / bucket_s
  return max(2, int(rows // 8 * 8) if rows >= 8 else int(rows))


# ------------------------------------------------------------------------------ stage helpers

def make_config(preset: str, dtype: str, remat: str | None = None):
  """The preset's experiment config (experiments/<preset>.py: its remat policy and objective)
  where there is one, else the defaults with model.preset; dropouts 0, compute `dtype`, and
  `remat` (None: the experiment's policy, "none" without an experiment)."""
  from benchmarks.common import DROPOUT_FIELDS
  from xlsr_jax.config_loading import load_config_file
  from xlsr_jax.training.config_defaults import get_default_config
  experiment = os.path.join(ROOT, "experiments", f"{preset}.py")
  if os.path.exists(experiment):
    config = load_config_file(experiment)
  else:
    config = get_default_config()
    config.model.preset = preset
  for field in DROPOUT_FIELDS:
    config.model[field] = 0.0
  config.model.dtype = dtype
  if remat is not None or "remat_policy" not in config.model:
    config.model.remat_policy = remat or "none"
  return config


def make_batch(rows: int, samples: int, seed: int, half_padded: bool):
  """float32 waveforms [rows, samples] and lengths; with `half_padded` the last row is half real."""
  import numpy as np
  wave = np.random.default_rng(seed).standard_normal((rows, samples)).astype(np.float32)
  lengths = np.full((rows,), samples, np.int32)
  if half_padded:
    lengths[-1] = samples // 2
    wave[-1, samples // 2:] = 0.0
  return wave, lengths


def gpu_processes() -> str:
  """What else runs on the GPUs (nvidia-smi's compute processes), for the record."""
  try:
    return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                           "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=30).stdout.strip() or "none"
  except (OSError, subprocess.SubprocessError) as e:
    return f"unknown (nvidia-smi: {e})"


def parity_tests() -> dict:
  """Stage 2: the float32 parity tests on the GPU (pytest in a subprocess, time-limited). Run
  before this process starts its own GPU backend, which takes most of the GPU's memory."""
  env = dict(os.environ, JAX_PLATFORMS="cuda", JAX_DEFAULT_MATMUL_PRECISION="highest",
             XLA_PYTHON_CLIENT_PREALLOCATE="false",
             CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES") or "0",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # The tests that compare against the reference (not the checkpoint-conversion ones, which run
  # no model); -q comes from pyproject.toml (a second would hide the passed/failed count).
  command = [sys.executable, "-m", "pytest", "tests/test_parity_hf.py", "tests/test_parity_loss.py",
             "-k", "match_reference", "-rfE", "-p", "no:cacheprovider"]
  log("float32 parity tests on the GPU: " + " ".join(command[2:]))
  start = time.perf_counter()
  try:
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=_PYTEST_TIMEOUT.value)
    output, code = proc.stdout + proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    code = "timeout"
  summary = [l for l in output.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
  record = dict(command=" ".join(command[2:]), exit_code=code,
                summary=summary[-1] if summary else output[-300:],
                seconds=round(time.perf_counter() - start, 1),
                failures=[l for l in output.splitlines() if l.startswith(("FAILED", "ERROR"))][:20],
                tail=output[-3000:] if code != 0 else "")
  log(f"float32 parity tests: exit {code}: {record['summary']} ({record['seconds']} s)")
  for line in record["failures"]:
    log("  " + line)
  return record


def bf16_parity(results: Results, device, preset: str, dry_run: bool) -> None:
  """Stage 3: the same parameters and batch on `device` (bf16 and f32) and on the CPU (f32)."""
  import flax.linen as nn
  import jax
  import numpy as np
  from xlsr_jax.models.wav2vec2 import Wav2Vec2Model
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.state import build_trainer

  samples = SAMPLE_RATE if dry_run else 2 * SAMPLE_RATE  # 2 s: 99 frames (odd: cuDNN padding)
  wave, lengths = make_batch(2, samples, seed=1, half_padded=True)
  cpu = jax.devices("cpu")[0]
  eval_key = jax.random.key(7)
  out = {}
  reference = None
  runs = [("cpu_f32", cpu, "float32"), ("device_f32", device, "float32"),
          ("device_bf16", device, "bfloat16")]
  if dry_run:  # the "device" is this CPU: its float32 run would be the reference itself
    runs.pop(1)
  for name, dev, dtype in runs:
    config = make_config(preset, dtype, "none")
    trainer = build_trainer(config, make_mesh(1, 1, 1, devices=[dev]), samples)
    if reference is None:
      state = trainer.create_state()
      reference = jax.device_get(state)
    state = jax.device_put(reference, trainer.state_sharding)
    batch = {"waveform": jax.device_put(wave, trainer.batch_sharding["waveform"]),
             "lengths": jax.device_put(lengths, trainer.batch_sharding["lengths"])}
    model = Wav2Vec2Model(trainer.model.config)
    params = nn.unbox(state.params)["wav2vec2"]
    padding = np.arange(samples)[None, :] >= lengths[:, None]
    forward = jax.jit(lambda p, w, m: model.apply({"params": p}, w, m)["last_hidden_state"])
    # float32 runs at full float32 precision (a GPU's default would use TF32 for the matmuls).
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
      metrics = jax.device_get(trainer.evaluate(state, batch, eval_key))
      hidden = forward(params, jax.device_put(wave, dev), jax.device_put(padding, dev))
    hidden = np.asarray(jax.device_get(hidden), np.float32)
    valid = _frame_valid(padding, trainer.model.config)
    out[name] = dict(loss=float(metrics["loss"]), hidden=hidden, valid=valid,
                     platform=dev.platform)
  record = {}
  ref = out["cpu_f32"]
  for name, hidden_rtol, loss_rtol in (("device_f32", F32_HIDDEN_RTOL, F32_LOSS_RTOL),
                                       ("device_bf16", BF16_HIDDEN_RTOL, BF16_LOSS_RTOL)):
    if name not in out:
      continue
    got = out[name]
    mask = ref["valid"][..., None]
    err = float(np.linalg.norm(np.where(mask, got["hidden"] - ref["hidden"], 0)) /
                np.linalg.norm(np.where(mask, ref["hidden"], 0)))
    loss_err = abs(got["loss"] - ref["loss"]) / abs(ref["loss"])
    ok = err <= hidden_rtol and loss_err <= loss_rtol and math.isfinite(got["loss"])
    record[name] = dict(platform=got["platform"], hidden_rel_l2_err=err, hidden_rtol=hidden_rtol,
                        loss=got["loss"], cpu_f32_loss=ref["loss"], loss_rel_err=loss_err,
                        loss_rtol=loss_rtol, ok=ok)
    log(f"parity {preset} {name} vs CPU float32: hidden rel L2 err {err:.2e} (<= {hidden_rtol:g}), "
        f"loss {got['loss']:.5f} vs {ref['loss']:.5f} (rel {loss_err:.2e} <= {loss_rtol:g}): "
        f"{'ok' if ok else 'FAILED'}")
  results.set("parity_vs_cpu", dict(preset=preset, rows=2, samples=samples, **record))


def _frame_valid(padding, config):
  import jax.numpy as jnp
  import numpy as np
  from xlsr_jax.models.wav2vec2 import frame_valid_mask
  from xlsr_jax.models.feature_encoder import frame_lengths
  frames = frame_lengths(padding.shape[1], config)
  return np.asarray(frame_valid_mask(jnp.asarray(padding), frames, config))


def attention_kernel_in(hlo_text: str) -> str:
  """Which attention the compiled program holds: 'cudnn' (its fused custom calls) or 'xla'."""
  return "cudnn" if "__cudnn$fmha" in hlo_text else "xla"


def time_steps(results: Results, device, presets: list[str], buckets: list[float], dry_run: bool,
               started: float, spec) -> None:
  """Stage 4: one trainer per preset (for the longest crop), one compiled step per bucket, bucket
  by bucket (longest first, every preset), so a cut-off run has the long crops of each preset."""
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.state import build_trainer

  dtype = "bfloat16"
  longest = round(max(buckets) * SAMPLE_RATE)
  runs = {}
  for preset in presets:
    trainer = build_trainer(make_config(preset, dtype), make_mesh(1, 1, 1, devices=[device]), longest)
    runs[preset] = dict(trainer=trainer, state=trainer.create_state(), last_cost=0.0)
    cfg = trainer.model.config
    log(f"{preset}: {dtype} compute, float32 params and AdamW state, remat {cfg.remat_policy}, "
        f"attention_impl {cfg.attention_impl}")
  for bucket_s in buckets:
    for preset, run in runs.items():
      trainer = run["trainer"]
      elapsed = time.perf_counter() - started
      if elapsed + run["last_cost"] > _BUDGET.value:
        log(f"{preset} {bucket_s:g} s: skipped (elapsed {elapsed:.0f} s + its last bucket "
            f"{run['last_cost']:.0f} s > budget {_BUDGET.value:.0f} s)")
        results.append("timings", dict(preset=preset, bucket_s=bucket_s, skipped="budget"))
        continue
      bucket_start = time.perf_counter()
      rows = 2 if dry_run else rows_for(preset, bucket_s, spec.hbm_bytes if spec else None)
      for attempt in range(2):
        try:
          record, run["state"] = _time_bucket(trainer, run["state"], device, preset, bucket_s, rows,
                                              dry_run, spec)
          break
        except Exception as e:  # pylint: disable=broad-except
          text = f"{type(e).__name__}: {e}"
          run["state"] = trainer.create_state()  # a failed call may have consumed the donated state
          if attempt == 0 and ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()):
            log(f"{preset} {bucket_s:g} s x {rows} rows: out of memory; retrying with {rows // 2} rows")
            rows //= 2
            continue
          log(f"{preset} {bucket_s:g} s x {rows} rows: FAILED: {text[:500]}")
          record = dict(preset=preset, bucket_s=bucket_s, rows=rows, error=text[:2000])
          break
      results.append("timings", record)
      run["last_cost"] = time.perf_counter() - bucket_start


def _time_bucket(trainer, state, device, preset, bucket_s, rows, dry_run, spec):
  import jax
  import numpy as np
  from benchmarks.common import spread, peak_rss_mib
  from xlsr_jax.training import flops
  from xlsr_jax.training import train_step as ts

  samples = round(bucket_s * SAMPLE_RATE)
  wave, lengths = make_batch(rows, samples, seed=0, half_padded=False)
  batch = {"waveform": jax.device_put(wave, trainer.batch_sharding["waveform"]),
           "lengths": jax.device_put(lengths, trainer.batch_sharding["lengths"])}
  start = time.perf_counter()
  with jax.set_mesh(trainer.mesh):  # as Trainer.step runs it
    compiled = trainer.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  kernel = attention_kernel_in(compiled.as_text())

  def step():
    nonlocal state
    state, metrics = compiled(state, batch)
    return jax.block_until_ready(metrics)

  first = time.perf_counter()
  metrics = step()
  first_s = time.perf_counter() - first
  step()  # warm-up
  count = 2 if dry_run else max(3, int(_TIME_S.value / max(first_s, 1e-3)))
  times = []
  for _ in range(count):
    t = time.perf_counter()
    metrics = step()
    times.append(time.perf_counter() - t)
  stats = spread(times)
  model_cfg = trainer.model.config
  m = ts.StepShapes.create(model_cfg, trainer.config.objective, samples).max_masked
  size = flops.StepSize(batch=rows, num_samples=samples, num_masked=m,
                        num_negatives=trainer.config.objective.num_negatives)
  model_flops = float(flops.train_step_flops(model_cfg, size)["total"])
  step_s = stats["median"]
  stats_mem = device.memory_stats() or {}
  peak = stats_mem.get("peak_bytes_in_use")
  record = dict(
      preset=preset, bucket_s=bucket_s, rows=rows, samples=samples, dtype="bfloat16",
      remat_policy=model_cfg.remat_policy, attention_kernel=kernel, compile_s=round(compile_s, 2),
      first_step_s=round(first_s, 4), step_s=stats, steps_timed=count,
      model_tflops_per_step=model_flops / 1e12,
      mfu=(model_flops / step_s / spec.peak_flops) if spec else None,
      audio_seconds_per_s=rows * samples / SAMPLE_RATE / step_s,
      xla_temp_gib=memory.temp_size_in_bytes / 2**30 if memory else None,
      # The program's own memory (arguments, outputs not aliased to them, temporaries), and the
      # device's peak since this process started (every earlier bucket and preset included).
      program_gib=(memory.argument_size_in_bytes + memory.output_size_in_bytes
                   - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 2**30 if memory else None,
      peak_device_gib_so_far=peak / 2**30 if peak else None, peak_rss_mib=peak_rss_mib(),
      loss=float(metrics["loss"]))
  log(f"{preset} {bucket_s:g} s x {rows} rows: step {1e3 * step_s:.1f} ms (median of {count}), "
      f"compile {compile_s:.1f} s, attention {kernel}, "
      + (f"MFU {100 * record['mfu']:.1f}%, " if record["mfu"] is not None else "")
      + f"{record['audio_seconds_per_s']:.0f} audio-s/s, program {record['program_gib'] or 0:.2f} GiB "
      + f"(XLA temp {record['xla_temp_gib'] or 0:.2f}), "
      + (f"device peak so far {record['peak_device_gib_so_far']:.2f} GiB, " if peak else "")
      + f"loss {record['loss']:.3f}")
  return record, state


# ------------------------------------------------------------------------------------- main

def main(argv) -> None:
  del argv
  started = time.perf_counter()
  dry_run = _DRY_RUN.value
  xla_flags = devices_lib.apply_gpu_xla_flags()  # before jax starts a backend
  log(f"XLA_FLAGS={xla_flags}")
  other_gpu_processes = gpu_processes()  # before this process or its tests use the GPU
  if dry_run:
    pytest_record = "skipped in the dry run (the test suite runs these tests on CPU)"
  else:
    pytest_record = parity_tests()
  import jax
  import jaxlib
  from xlsr_jax.models import transformer

  if dry_run:  # the last CPU device: with several (the tests' 8), the "device" is not the CPU
    device = jax.devices("cpu")[-1]  # reference's, so arrays cross devices as they would on a GPU
  else:
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
      print("gpu_check: jax sees no GPU (jax.devices() = "
            f"{jax.devices()}); install the CUDA build (pip install -r requirements-gpu.txt), "
            "or run with --dry_run on a CPU machine", file=sys.stderr)
      sys.exit(2)
    device = gpus[0]
  try:
    spec = devices_lib.lookup(device.device_kind)
  except KeyError:
    spec = None
  presets = ["tiny"] if dry_run else _PRESETS.value
  buckets = [1.0] if dry_run else sorted((float(b) for b in _BUCKETS.value), reverse=True)
  out = _OUT.value or os.path.join(ROOT, "benchmarks", "results", f"gpu_check_{card_name(device)}.json")
  header = dict(
      command=" ".join([os.path.basename(sys.executable), "-m", "benchmarks.gpu_check"] + sys.argv[1:]),
      commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      host=platform.node(), cpu_count=os.cpu_count(), load_avg=os.getloadavg(),
      other_gpu_processes=other_gpu_processes if not dry_run else "dry run on a CPU machine",
      jax=jax.__version__, jaxlib=jaxlib.__version__, python=platform.python_version(),
      device=device.device_kind, platform=device.platform, device_count=len(jax.devices()),
      peak_bf16_tflops=spec.peak_flops / 1e12 if spec else None,
      memory_gb=spec.hbm_bytes / 1e9 if spec else None, cudnn_version=transformer.cudnn_version(),
      xla_flags=xla_flags, dry_run=dry_run, presets=presets, bucket_seconds=buckets,
      budget_s=_BUDGET.value)
  results = Results(out, header)
  log(f"jax {jax.__version__} on {device.device_kind} ({device.platform}); cuDNN "
      f"{header['cudnn_version']}; results: {out}")
  results.set("parity_f32_pytest", pytest_record)
  bf16_parity(results, device, "tiny" if dry_run else _PARITY_PRESET.value, dry_run)
  time_steps(results, device, presets, buckets, dry_run, started, spec)
  results.set("total_s", round(time.perf_counter() - started, 1))
  log(f"done in {results.data['total_s']} s; results in {out}")


if __name__ == "__main__":
  app.run(main)
