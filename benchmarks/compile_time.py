"""Time to compile the pretraining step of every preset on this machine (CPU), the cost users feel first.

  python -m benchmarks.compile_time                            # every preset, batch 1 x 2 s
  python -m benchmarks.compile_time --presets=xlsr_2b --seconds=20

For each preset the real `Trainer.train_step` is lowered on abstract state and batch (shapes only:
nothing is allocated, so xlsr_2b needs no 35 GB of parameters and optimizer state) and compiled
for one CPU device. xlsr_300m / 1b / 2b use their experiment config (bf16 compute, remat policy,
loss settings) with the batch and crop replaced; tiny and base use the defaults. Each preset runs
in a fresh process, so no jit or tracing cache from an earlier preset helps a later one.

The Transformer blocks are one `nn.scan`, so the program holds one layer whatever the depth: the
row "xlsr_300m, 48 layers" isolates depth (24 -> 48 layers at the same width) from width. The AOT
compile for TPU topologies is reported by `python -m xlsr_jax.plan` (its `compile_seconds`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags
from data_pipelines.features import SAMPLE_RATE

_PRESETS = flags.DEFINE_list("presets", ["tiny", "base", "xlsr_300m", "xlsr_300m@48", "xlsr_1b",
                                         "xlsr_2b"],
                             "Presets to compile; NAME@L overrides the number of layers.")
_BATCH = flags.DEFINE_integer("batch", 1, "Utterances per step.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Crop length in seconds (16 kHz).")
_ONE = flags.DEFINE_string("one", None, "Internal: compile this preset and print JSON.")

EXPERIMENTS = {"xlsr_300m": "experiments/xlsr_300m.py", "xlsr_1b": "experiments/xlsr_1b.py",
               "xlsr_2b": "experiments/xlsr_2b.py"}


def compile_one(name: str, batch: int, samples: int) -> dict:
  """Build, lower and compile one preset's train step; seconds per stage and the program size."""
  start = time.perf_counter()
  import jax
  from xlsr_jax.training import capacity
  from xlsr_jax.config_loading import load_config_file
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.config_defaults import get_default_config
  from xlsr_jax.training.state import build_trainer
  import_s = time.perf_counter() - start
  preset, _, layers = name.partition("@")
  if preset in EXPERIMENTS:
    config = load_config_file(EXPERIMENTS[preset])
  else:
    config = get_default_config()
    config.model.preset = preset
  if layers:
    config.model.num_hidden_layers = int(layers)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  config.data.max_sample_size = samples
  config.data.batch_seconds = batch * samples / SAMPLE_RATE
  config.train.grad_accum_steps = 1
  start = time.perf_counter()
  trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), samples)
  build_s = time.perf_counter() - start
  lowered, lower_s = capacity.lower_step(trainer, batch)  # trace + lower to StableHLO
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  import resource
  cfg = trainer.model.config
  return dict(name=name, layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
              dtype=str(jax.numpy.dtype(cfg.dtype)), remat=cfg.remat_policy, import_s=import_s,
              build_s=build_s, lower_s=lower_s, compile_s=compile_s,
              hlo_kib=len(compiled.as_text()) / 1024,
              peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


HEADER = (f"{'preset':<14}{'layers':>7}{'hidden':>7}{'dtype':>10}  {'remat':<24}{'trace+lower':>12}"
          f"{'compile':>9}{'total':>8}{'HLO text':>10}{'peak RSS':>10}")


def format_row(r: dict) -> str:
  total = r["build_s"] + r["lower_s"] + r["compile_s"]
  return (f"{r['name']:<14}{r['layers']:>7}{r['hidden']:>7}{r['dtype']:>10}  {r['remat']:<24}"
          f"{r['build_s'] + r['lower_s']:>10.1f} s{r['compile_s']:>7.1f} s{total:>6.1f} s"
          f"{r['hlo_kib']:>6.0f} KiB{r['peak_rss_mib']:>6.0f} MiB")


def main(argv) -> None:
  del argv
  samples = round(_SECONDS.value * SAMPLE_RATE)
  if _ONE.value:
    print("@@result " + json.dumps(compile_one(_ONE.value, _BATCH.value, samples)), flush=True)
    return
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")  # compile for this machine's CPU even with libtpu installed
  print(f"{os.cpu_count()} CPU cores, {os.getloadavg()[0]:.2f} load; train step at batch "
        f"{_BATCH.value} x {_SECONDS.value:g} s, one CPU device, each preset in a fresh process",
        flush=True)
  print(HEADER, flush=True)
  results = []
  for name in _PRESETS.value:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_time", f"--one={name}",
                           f"--batch={_BATCH.value}", f"--seconds={_SECONDS.value}"],
                          capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("@@result ")]
    if proc.returncode or not lines:
      sys.stderr.write(proc.stderr[-4000:])
      raise SystemExit(f"compiling {name} failed (exit code {proc.returncode})")
    r = json.loads(lines[0][len("@@result "):])
    results.append(r)
    print(format_row(r), flush=True)
  print("\n" + json.dumps(results))


if __name__ == "__main__":
  app.run(main)
