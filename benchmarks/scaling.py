"""How the pretraining step grows: CPU step time vs crop length and model size, TPU memory vs batch.

  python -m benchmarks.scaling                      # both parts -> benchmarks/results/scaling.{json,png}
  python -m benchmarks.scaling --skip_tpu           # CPU part only (no libtpu needed)
  python -m benchmarks.scaling --replot             # redraw the PNG from the saved JSON

CPU part: our jitted `Trainer.step` (forward, loss, backward, AdamW) for --presets at batch 1 and
each --crop_seconds, median of --steps timed steps after one warm-up, in a fresh process per
preset; beside it the analytic model FLOPs of the same step (xlsr_jax.training.flops). If the time
follows the FLOPs, FLOPs / time stays flat across crop lengths; the plot shows the measured time,
a line proportional to the FLOPs (matched at the shortest crop), and a least-squares fit
time = fixed + FLOPs / rate that separates per-step work which does not grow with the crop.

TPU part: `python -m xlsr_jax.plan --skip_cost --json` (one memory-only AOT compile per point) of
--tpu_config on --tpu_topology at each --tpu_batches per-chip batch: per-chip bytes (arguments =
sharded state, temporaries = activations) against the chip's HBM.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import common
from data_pipelines.features import SAMPLE_RATE

_PRESETS = flags.DEFINE_list("presets", ["tiny", "base"], "CPU part: presets.")
_CROPS = flags.DEFINE_list("crop_seconds", ["2", "5", "10", "20"], "CPU part: crop lengths (s).")
_STEPS = flags.DEFINE_integer("steps", 2, "CPU part: timed steps per point (after one warm-up).")
_TPU_CONFIG = flags.DEFINE_string("tpu_config", "experiments/xlsr_300m.py", "TPU part: config.")
_TPU_TOPOLOGY = flags.DEFINE_string("tpu_topology", "v5e-8", "TPU part: topology.")
_TPU_BATCHES = flags.DEFINE_list("tpu_batches", ["1", "2", "4", "8"], "TPU part: crops per chip.")
_TPU_SET = flags.DEFINE_multi_string("tpu_set", [], "TPU part: extra --config.a.b=v overrides.")
_SKIP_TPU = flags.DEFINE_bool("skip_tpu", False, "Skip the TPU part.")
_SKIP_CPU = flags.DEFINE_bool("skip_cpu", False, "Skip the CPU part (reuse the saved one).")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw the PNG from the saved JSON.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/scaling", "Output path without extension.")
_ONE = flags.DEFINE_string("one", None, "Internal: time one preset at every crop and print JSON.")



def time_preset(preset: str, crops: list[float], steps: int) -> list[dict]:
  """Our step for `preset` at batch 1 and each crop: median seconds and analytic FLOPs."""
  import jax
  import numpy as np
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training import flops
  from xlsr_jax.training.config_defaults import get_default_config
  from xlsr_jax.training.state import build_trainer
  out = []
  for seconds in crops:
    samples = round(seconds * SAMPLE_RATE)
    config = get_default_config()
    config.model.preset = preset
    for field in common.DROPOUT_FIELDS:
      config.model[field] = 0.0
    trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), samples)
    state = trainer.create_state()
    wave = np.random.default_rng(0).standard_normal((1, samples)).astype(np.float32)
    batch = {"waveform": jax.device_put(wave), "lengths": jax.device_put(np.full((1,), samples, np.int32))}
    times = []
    for i in range(steps + 1):
      start = time.perf_counter()
      state, metrics = trainer.step(state, batch)
      jax.block_until_ready((state, metrics))
      if i:  # the first call compiles
        times.append(time.perf_counter() - start)
    size = flops.StepSize(1, samples, trainer.shapes.max_masked, config.objective.num_negatives)
    out.append(dict(preset=preset, seconds=seconds, frames=trainer.shapes.num_frames,
                    step_s=statistics.median(times), times=times,
                    flops=float(flops.train_step_flops(trainer.model.config, size)["total"]),
                    load=os.getloadavg()[0]))
    print(f"  {preset:<6} {seconds:>5g} s crop: {1e3 * out[-1]['step_s']:9.1f} ms/step, "
          f"{out[-1]['flops'] / 1e9:8.1f} GFLOP", file=sys.stderr, flush=True)
    del state, trainer
  return out


def cpu_part() -> list[dict]:
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  rows = []
  for preset in _PRESETS.value:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", f"--one={preset}",
                           f"--crop_seconds={','.join(_CROPS.value)}", f"--steps={_STEPS.value}"],
                          stdout=subprocess.PIPE, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("@@result ")]
    if proc.returncode or not lines:
      raise SystemExit(f"timing {preset} failed (exit code {proc.returncode})")
    rows += json.loads(lines[0][len("@@result "):])
  return rows


def tpu_part() -> list[dict]:
  rows = []
  for per_chip in _TPU_BATCHES.value:
    cmd = [sys.executable, "-m", "xlsr_jax.plan", f"--config={_TPU_CONFIG.value}",
           f"--topology={_TPU_TOPOLOGY.value}", f"--batch_per_chip={per_chip}", "--skip_cost",
           "--json", *_TPU_SET.value]
    print("  " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
      raise SystemExit(f"plan failed (exit code {proc.returncode}): {' '.join(cmd)}")
    r = json.loads(proc.stdout[proc.stdout.index("{"):])
    mem = r["memory"]
    rows.append(dict(batch_per_chip=float(per_chip), fits=mem["fits"], hbm_bytes=mem["hbm_bytes"],
                     total_bytes=mem.get("total_bytes"), argument_bytes=mem.get("argument_bytes"),
                     temp_bytes=mem.get("temp_bytes"), compile_error=r["compile_error"],
                     compile_seconds=r["compile_seconds"], mesh=r["mesh"],
                     remat_policy=r["remat_policy"], model=r["model"], topology=r["topology"],
                     device_kind=r["device_kind"], num_samples=r["num_samples"]))
  return rows


def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cpu, tpu = result.get("cpu", []), result.get("tpu", [])
  fig, axes = plt.subplots(1, 3 if tpu else 2, figsize=(15 if tpu else 10, 4.2))
  presets = sorted({r["preset"] for r in cpu}, key=[r["preset"] for r in cpu].index)
  for preset in presets:
    rows = [r for r in cpu if r["preset"] == preset]
    x = [r["seconds"] for r in rows]
    line, = axes[0].plot(x, [r["step_s"] for r in rows], "o-", label=f"{preset}: measured")
    # Analytic FLOPs scaled to the measured time at the shortest crop: the "time follows FLOPs" line.
    scale = rows[0]["step_s"] / rows[0]["flops"]
    axes[0].plot(x, [r["flops"] * scale for r in rows], "--", color=line.get_color(),
                 label=f"{preset}: proportional to analytic FLOPs")
    fixed, rate = common.fit_fixed_plus_flops(rows)
    axes[0].plot(x, [fixed + r["flops"] / rate for r in rows], ":", color=line.get_color(),
                 label=f"{preset}: fit {fixed:.2g} s + FLOPs / {rate / 1e9:.0f} GFLOP/s")
    axes[1].plot(x, [r["flops"] / r["step_s"] / 1e9 for r in rows], "o-", color=line.get_color(),
                 label=preset)
  axes[0].set(xlabel="crop length (s), batch 1", ylabel="s / step (CPU, 2 cores)", yscale="log",
              title="our train step on CPU vs crop length")
  axes[0].legend(fontsize=7)
  axes[1].set(xlabel="crop length (s), batch 1", ylabel="achieved model GFLOP/s",
              title="analytic FLOPs / measured time")
  axes[1].legend(fontsize=8)
  if tpu:
    ok = [r for r in tpu if r["total_bytes"] is not None]
    gib = 2**30
    axes[2].plot([r["batch_per_chip"] for r in ok], [r["total_bytes"] / gib for r in ok], "o-",
                 label="total")
    axes[2].plot([r["batch_per_chip"] for r in ok], [r["temp_bytes"] / gib for r in ok], "s--",
                 label="temporaries (activations)")
    axes[2].plot([r["batch_per_chip"] for r in ok], [r["argument_bytes"] / gib for r in ok], "^--",
                 label="arguments (sharded state)")
    axes[2].axhline(tpu[0]["hbm_bytes"] / gib, color="red", lw=1, label="HBM")
    for r in tpu:
      if r["total_bytes"] is None:
        axes[2].axvline(r["batch_per_chip"], color="gray", ls=":", label="does not compile (HBM)")
    first = tpu[0]
    axes[2].set(xlabel="crops per chip", ylabel="GiB per chip",
                title=f"{first['model']} on {first['topology']}: memory vs batch\n"
                      f"({first['num_samples'] / SAMPLE_RATE:g} s crops, remat {first['remat_policy']})")
    axes[2].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv) -> None:
  del argv
  if _ONE.value:
    rows = time_preset(_ONE.value, [float(c) for c in _CROPS.value], _STEPS.value)
    print("@@result " + json.dumps(rows), flush=True)
    return
  json_path, png_path = _OUT.value + ".json", _OUT.value + ".png"
  os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
  result = {}
  if os.path.exists(json_path):
    with open(json_path) as f:
      result = json.load(f)
  if not _REPLOT.value:
    if not _SKIP_CPU.value:
      print(f"CPU: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
      result["cpu"] = cpu_part()
    if not _SKIP_TPU.value:
      result["tpu"] = tpu_part()
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  for r in result.get("cpu", []):
    base = next(x for x in result["cpu"] if x["preset"] == r["preset"])
    print(f"{r['preset']:<6}{r['seconds']:>5g} s {r['frames']:>5} frames {1e3 * r['step_s']:>10.1f} ms "
          f"x{r['step_s'] / base['step_s']:>6.2f} time  x{r['flops'] / base['flops']:>6.2f} FLOPs "
          f"{r['flops'] / r['step_s'] / 1e9:>7.1f} GFLOP/s")
  for preset in dict.fromkeys(r["preset"] for r in result.get("cpu", [])):
    fixed, rate = common.fit_fixed_plus_flops([r for r in result["cpu"] if r["preset"] == preset])
    print(f"{preset:<10} fit: step = {fixed:.3f} s + analytic FLOPs / {rate / 1e9:.1f} GFLOP/s")
  for r in result.get("tpu", []):
    total = "does not fit" if r["total_bytes"] is None else f"{r['total_bytes'] / 2**30:.2f} GiB"
    print(f"{r['model']} {r['topology']} batch/chip {r['batch_per_chip']:g}: {total} of "
          f"{r['hbm_bytes'] / 2**30:.0f} GiB")
  plot(result, png_path)
  print(f"wrote {png_path} and {json_path}")


if __name__ == "__main__":
  app.run(main)
