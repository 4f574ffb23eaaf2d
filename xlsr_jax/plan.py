"""Capacity plan: compile the real train step ahead of time for a TPU topology, on this CPU machine.

  python -m xlsr_jax.plan --config=experiments/xlsr_2b.py --topology=v5p-64 \
      [--config.a.b=v ...] [--batch_per_chip=N] [--skip_cost] [--json] [--bucket_method=layers|full]

Builds the Trainer on a mesh over the topology's (virtual) devices, lowers `Trainer.train_step` on
abstract state and batch (shapes and shardings only, nothing allocated) and compiles it with libtpu
(pip install -r requirements-tpu.txt). Prints per-chip memory (arguments, outputs, temporaries)
against the chip's HBM, FLOPs per step (XLA's and the analytic model count), the compiler's
step-time estimate and the MFU it implies, and compile time. How the figures are made (two
compiles, the layer-scan correction): `xlsr_jax/training/capacity.py`.

Topology names are Cloud TPU accelerator types. For v4 and v5p the number counts TensorCores, two
per chip, and each chip is one JAX ("megacore") device: v5p-64 is 32 chips, v4-32 is 16 chips. For
v5e (also spelled v5litepod) and v6e it counts chips, one TensorCore each: v5e-256 is 256 chips.
config.mesh.dcn_data > 1 compiles for that many slices of the topology (multi-slice).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import ml_collections

from data_pipelines.features import SAMPLE_RATE
from xlsr_jax.config_loading import ConfigError, load_validated, model_config_from, split_argv
from xlsr_jax.sharding.topologies import PlanError, Topology, parse_topology
from xlsr_jax.training import flops as flops_lib
from xlsr_jax.training import capacity


def format_bucket_plan(r: dict[str, Any]) -> str:
  """The human-readable report of a `plan_buckets` result."""
  lines = [f"buckets         {r['model']} on {r['topology']}, {r['bucket_mode']} mode, length "
           f"profile {r['length_profile']} ({100 * r['dropped_share']:.1f}% of its utterances "
           "too short for any bucket)"]
  for b in r["buckets"]:
    mem = b["memory"]
    memory = (f"{_gib(mem['total_bytes'])} / chip" if mem.get("total_bytes") is not None
              else "memory not compiled" if "not_compiled" in mem else "DOES NOT FIT")
    est = f", est. {b['optimal_seconds']:.3f} s" if b.get("optimal_seconds") else ""
    lines.append(f"  {b['num_samples'] / SAMPLE_RATE:>5g} s x {b['global_batch']:>5} crops: "
                 f"{100 * b['step_probability']:5.1f}% of steps, {memory}{est}")
  lines.append(f"memory          largest bucket {_memory_lines(r['largest_memory'])[1]}"
               if r["largest_memory"].get("total_bytes") is not None else
               "memory          a bucket DOES NOT FIT")
  if "step_seconds" in r:
    how = ("each bucket's layer compiled, the largest bucket's whole step"
           if r.get("bucket_method") == "layers" else "every bucket's whole step compiled")
    lines.append(f"step time       {r['step_seconds']:.3f} s averaged over the bucket mix ({how})")
    lines.append(f"est. MFU        {100 * r['estimated_mfu']:.1f}% on all frames, "
                 f"{100 * r['estimated_useful_mfu']:.1f}% useful (real audio only)")
  return "\n".join(lines)


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def _memory_lines(mem: dict[str, Any]) -> list[str]:
  verdict = "fits" if mem["fits"] else "DOES NOT FIT"
  return [f"arguments {_gib(mem['argument_bytes'])}, outputs {_gib(mem['output_bytes'])} (aliased "
          f"{_gib(mem['alias_bytes'])}), temporaries {_gib(mem['temp_bytes'])}, code "
          f"{_gib(mem['code_bytes'])}",
          f"total {_gib(mem['total_bytes'])} of {_gib(mem['hbm_bytes'])} HBM "
          f"({100 * mem['total_bytes'] / mem['hbm_bytes']:.0f}%): {verdict}"]


def format_plan(r: dict[str, Any]) -> str:
  """The human-readable report of a `plan` result."""
  pad = " " * 16
  lines = [
      f"topology        {r['topology']} ({r['device_kind']}, {r['chips']} chips, "
      f"{r['slices']} slice(s), {r['topology_shape']})",
      f"mesh            {' '.join(f'{k}={v}' for k, v in r['mesh'].items())}",
      f"model           {r['model']}: {r['parameters']:,} parameters, compute {r['dtype']}, "
      f"remat {r['remat_policy']}",
      f"global batch    {r['global_batch']} crops x {r['num_samples']} samples "
      f"({r['num_samples'] / SAMPLE_RATE:g} s, {r['num_frames']} frames, M={r['max_masked']}); "
      f"{r['batch_per_shard']} per batch shard and micro-step, grad_accum_steps={r['grad_accum_steps']}",
  ]
  if r["compile_error"]:
    lines.append(f"memory / chip   DOES NOT FIT in {_gib(r['hbm_bytes'])} HBM: {r['compile_error']}")
  else:
    first, second = _memory_lines(r["memory"])
    lines += [f"memory / chip   {first}", pad + second]
  if "cost_memory" in r:
    lines.append(f"{pad}(cost compile, windowed einsum off: {_memory_lines(r['cost_memory'])[1]})")
  analytic = r["analytic_flops"]["total"] / 1e12
  if r.get("xla_flops") is not None:
    raw = r["xla_raw"]
    lines += [f"FLOPs / step    XLA {r['xla_flops'] / 1e12:.1f} TFLOP = {r['xla_flops_per_chip'] / 1e12:.2f} "
              f"per chip x {r['chips']} (with remat and elementwise work); analytic model "
              f"{analytic:.1f} TFLOP (3 x forward matmuls)",
              f"{pad}XLA per chip = (step with loop bodies once {raw['flops_per_chip'] / 1e12:.3f} + "
              f"(layers - 1) x one layer {raw['layer_flops_per_chip'] / 1e12:.3f}) x grad_accum_steps"]
  else:
    lines.append(f"FLOPs / step    analytic model {analytic:.1f} TFLOP (3 x forward matmuls)")
  if r.get("optimal_seconds"):
    lines += [f"step time       {r['optimal_seconds']:.3f} s (compiler estimate: optimal_seconds, "
              f"corrected for the layer scan as the FLOPs)",
              f"est. MFU        {100 * r['estimated_mfu']:.1f}% = analytic FLOPs / "
              f"({r['optimal_seconds']:.3f} s x {r['chips']} chips x "
              f"{r['peak_flops_per_chip'] / 1e12:g} TFLOP/s)"]
    if "estimated_useful_mfu" in r:
      lines.append(f"useful MFU      {100 * r['estimated_useful_mfu']:.1f}% (real audio only, length "
                   f"profile {r['length_profile']} cut or padded to the crop)")
  elif "cost_compile_seconds" in r:
    raw = r.get("xla_raw", {}).get("optimal_seconds")
    lines.append("step time       no estimate: " + (r["cost_compile_error"] or (
        f"the compiler's optimal_seconds is {raw:.3g} (negative: no estimate for this program/chip)"
        if raw is not None and raw < 0 else "no optimal_seconds")))
  times = [f"lower {r['lower_seconds']:.1f} s", f"compile {r['compile_seconds']:.1f} s"]
  if "cost_compile_seconds" in r:
    times.append(f"cost compile {r['cost_compile_seconds']:.1f} s")
  if "layer_compile_seconds" in r:
    times.append(f"one layer {r['layer_compile_seconds']:.1f} s")
  lines.append(f"compile time    {', '.join(times)}")
  lines.append("analytic FLOPs by component (train step):")
  lines.append(flops_lib.format_breakdown(r["analytic_flops"]))
  return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, Topology, argparse.Namespace]:
  """Config (file + overrides, validated), topology and flags; errors are ConfigError / PlanError."""
  from xlsr_jax.training.config_defaults import get_default_config
  path, overrides, rest = split_argv(argv)
  parser = argparse.ArgumentParser(prog="python -m xlsr_jax.plan", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", required=True, help="e.g. v5p-64, v5e-8, v4-32, v6e-256")
  parser.add_argument("--batch_per_chip", type=float, default=None,
                      help="global batch = this x chips (overrides data.batch_seconds)")
  parser.add_argument("--skip_cost", action="store_true",
                      help="compile once, for memory only (no XLA FLOPs or step-time estimate)")
  parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
  parser.add_argument("--length_profile", default="xlsr_mix",
                      help="utterance-length mix for useful MFU and the bucket mix: one of "
                           "data_pipelines/length_profiles.py NAMES (default xlsr_mix)")
  parser.add_argument("--bucket_method", default="layers", choices=("layers", "full"),
                      help="with data.bucket_seconds: compile the whole step for the largest "
                           "bucket and one encoder layer for the others (layers, default), or "
                           "the whole step for every bucket (full; ~25 min a bucket for xlsr_2b)")
  args = parser.parse_args(rest)
  config = load_validated(path, overrides, get_default_config(), "--config=experiments/<name>.py")
  model_config_from(config)
  topology = parse_topology(args.topology)
  if args.batch_per_chip is not None:
    capacity.set_batch_per_chip(config, args.batch_per_chip, topology.chips * config.mesh.dcn_data)
  from xlsr_jax.training import config_checks
  config_checks.validate(config)  # ranges and relations; the mesh against the topology is checked in plan()
  return config, topology, args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "JAX_PLATFORMS" not in os.environ:  # the plan needs no accelerator, only libtpu's compiler
    jax.config.update("jax_platforms", "cpu")
  try:
    config, topology, args = parse_args(argv)
    if config.data.bucket_seconds:
      result = capacity.plan_buckets(config, topology, cost=not args.skip_cost,
                                     profile=args.length_profile, method=args.bucket_method)
      text = "\n\n".join([*(format_plan(b) for b in result["buckets"]
                            if "not_compiled" not in b["memory"]), format_bucket_plan(result)])
    else:
      result = capacity.plan(config, topology, cost=not args.skip_cost, profile=args.length_profile)
      text = format_plan(result)
  except (ConfigError, PlanError) as e:
    print(f"plan error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1) if args.json else text)
  return 0


if __name__ == "__main__":
  sys.exit(main())