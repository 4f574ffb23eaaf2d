"""Capacity plan: compile the real train step ahead of time for a TPU topology, on this CPU machine.

  python -m xlsr_jax.plan --config=experiments/xlsr_2b.py --topology=v5p-64 \
      [--config.a.b=v ...] [--batch_per_chip=N] [--skip_cost] [--json]

Builds the Trainer on a mesh over the topology's (virtual) devices, lowers `Trainer.train_step` on
abstract state and batch (shapes and shardings only, nothing allocated) and compiles it with libtpu
(pip install -r requirements-tpu.txt). Prints per-chip memory (arguments, outputs, temporaries)
against the chip's HBM, FLOPs per step (XLA's and the analytic model count), the compiler's
step-time estimate and the MFU it implies, and compile time.

XLA's cost analysis counts the body of a while loop once, whatever its trip count (measured with
libtpu 0.0.52: the same FLOPs for 1 and 4 scanned layers). Two kinds of loop matter here:
- The TPU compiler turns FSDP matmuls and convolutions into "windowed einsum" loops (collective
  matmul: one weight shard per iteration): with fsdp=32 XLA counted under a third of the step's
  FLOPs. So the step is compiled twice: with libtpu's default options for the memory figures (the
  program training runs), and with those loops off (COST_OPTIONS) for FLOPs and optimal_seconds.
  The two differ in memory too (xlsr_300m on v5p-64: 24.6 vs 18.4 GiB per chip); both are shown.
  --skip_cost compiles once, for memory only.
- The Transformer is an nn.scan, so the plan also compiles one encoder layer's forward + backward
  (same remat policy, shapes, shardings and options) and adds (layers - 1) x its cost; with
  grad_accum_steps = k the whole is multiplied by k (the micro-batch scan; this also counts the
  optimizer update k times, a small elementwise term). Raw and corrected figures are reported.

Topology names are Cloud TPU accelerator types. For v4 and v5p the number counts TensorCores, two
per chip, and each chip is one JAX ("megacore") device: v5p-64 is 32 chips, v4-32 is 16 chips. For
v5e (also spelled v5litepod) and v6e it counts chips, one TensorCore each: v5e-256 is 256 chips.
config.mesh.dcn_data > 1 compiles for that many slices of the topology (multi-slice).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xlsr_jax.config_loading import (ConfigError, load_validated, model_config_from,
                                     split_argv)
from xlsr_jax.training import devices as devices_lib
from xlsr_jax.training import flops as flops_lib
from data_pipelines.features import SAMPLE_RATE

INSTALL_HINT = "pip install -r requirements-tpu.txt"
# libtpu options of the cost compile: no windowed-einsum loops (see the module docstring).
COST_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


class PlanError(ValueError):
  """A topology, batch or environment the plan cannot use; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """One TPU slice: arguments of `jax.experimental.topologies.get_topology_desc`."""
  name: str  # accelerator type, e.g. "v5p-64"
  chips: int
  topology_name: str  # e.g. "v5:2x4x4"
  chip_config_name: str  # "megacore" (v4, v5p) or "default"
  chips_per_host_bounds: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]


# Slice shapes by chip count (Cloud TPU docs, as MaxText's accelerator_to_spec_map): 3D tori for
# v4 / v5p (wrap-around links from a full 4x4x4 cube), 2D for v5e / v6e (wrap at 16 chips a side).
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
              256: (16, 16)}
_GENERATIONS = {  # accelerator-type prefix -> (topology prefix, TensorCores per chip)
    "v4": ("v4", 2), "v5p": ("v5", 2), "v5e": ("v5e", 1), "v5litepod": ("v5e", 1), "v6e": ("v6e", 1),
}


def parse_topology(name: str) -> Topology:
  """"v5p-64" -> Topology(chips=32, topology_name="v5:2x4x4", ...); unknown names list the valid ones."""
  prefix, sep, count = name.partition("-")
  if prefix not in _GENERATIONS or not sep or not count.isdigit():
    raise PlanError(f"--topology={name}: expected <generation>-<count> with generation one of "
                    f"{sorted(_GENERATIONS)}, e.g. v5p-64, v5e-8, v4-32, v6e-256")
  topo_prefix, cores_per_chip = _GENERATIONS[prefix]
  cores = int(count)
  chips = cores // cores_per_chip
  shapes = _SHAPES_3D if cores_per_chip == 2 else _SHAPES_2D
  if cores % cores_per_chip or chips not in shapes:
    valid = [f"{prefix}-{c * cores_per_chip}" for c in sorted(shapes)]
    raise PlanError(f"--topology={name}: {prefix} slices come in {', '.join(valid)} "
                    f"(the number counts {'TensorCores, 2 per chip' if cores_per_chip == 2 else 'chips'})")
  shape, megacore = shapes[chips], cores_per_chip == 2
  wrap = (chips >= 64,) * 3 if megacore else (shape[0] >= 16, shape[1] >= 16, False)
  return Topology(name, chips, f"{topo_prefix}:{'x'.join(map(str, shape))}",
                  "megacore" if megacore else "default", (1, 1, 1) if chips == 1 else (2, 2, 1), wrap)


def topology_devices(topology: Topology, num_slices: int = 1) -> list[jax.Device]:
  """The (virtual, compile-only) TPU devices of `num_slices` slices of `topology`."""
  if importlib.util.find_spec("libtpu") is None:
    raise PlanError(f"libtpu is not installed; the TPU compiler comes with it: {INSTALL_HINT}")
  # The plan never opens a local TPU: let it share libtpu with other processes on this machine
  # (otherwise /tmp/libtpu_lockfile allows one) and skip the TPU-VM worker discovery.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax.experimental.topologies import get_topology_desc
  desc = get_topology_desc(platform="tpu", topology_name=topology.topology_name,
                           chip_config_name=topology.chip_config_name,
                           chips_per_host_bounds=topology.chips_per_host_bounds,
                           num_slices=num_slices, wrap=topology.wrap)
  found = list(desc.devices)
  if len(found) != topology.chips * num_slices:
    raise PlanError(f"{topology.name}: libtpu describes {len(found)} devices, expected "
                    f"{topology.chips * num_slices} ({topology.chips} chips x {num_slices} slices)")
  return found


def global_batch(config: ml_collections.ConfigDict) -> int:
  """Utterances per step: config.data.batch_seconds of audio in crops of max_sample_size samples."""
  return int(round(config.data.batch_seconds * SAMPLE_RATE / config.data.max_sample_size))


def set_batch_per_chip(config: ml_collections.ConfigDict, per_chip: float, chips: int) -> None:
  """Global batch = per_chip x chips (MaxText's per_device_batch_size; may be fractional)."""
  crops = int(round(per_chip * chips))
  if crops < 1 or not math.isclose(crops, per_chip * chips):
    raise PlanError(f"--batch_per_chip={per_chip} x {chips} chips is not a whole number of crops >= 1")
  config.data.batch_seconds = crops * config.data.max_sample_size / SAMPLE_RATE


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their sharding, keeping the logical-axis boxes of `abstract`."""
  def attach(sharding, leaf):
    if isinstance(leaf, nn.meta.AxisMetadata):
      value = leaf.unbox()
      return leaf.replace_boxed(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
  return jax.tree.map(attach, shardings, abstract)


def memory_summary(stats: Any, hbm_bytes: int) -> dict[str, Any]:
  """Per-chip bytes from `compiled.memory_analysis()`; total = arguments + outputs - aliased
  (donated state) + temporaries + generated code."""
  out = dict(argument_bytes=stats.argument_size_in_bytes, output_bytes=stats.output_size_in_bytes,
             alias_bytes=stats.alias_size_in_bytes, temp_bytes=stats.temp_size_in_bytes,
             code_bytes=stats.generated_code_size_in_bytes)
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                        + out["temp_bytes"] + out["code_bytes"])
  out["hbm_bytes"] = hbm_bytes
  out["fits"] = out["total_bytes"] <= hbm_bytes
  return out


def _cost(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(cost or {})


def layer_program(trainer: Any, micro_batch: int) -> tuple[Any, tuple]:
  """One encoder layer's forward + backward, as the scanned body runs it: jitted fn and abstract args.

  x [micro_batch, frames, hidden], frame-valid flags and the output cotangent are batch-sharded,
  the layer's parameters sharded by the rules (the stacked "layers" axis dropped), the remat policy
  as in the model. Returns the output and the gradients, as the scan's forward and backward bodies
  produce them; the cotangent is an input (a constant one could be folded into reductions).
  """
  from xlsr_jax.models.transformer import EncoderLayer, _remat_policy
  from xlsr_jax.sharding.mesh import batch_sharding
  from xlsr_jax.training.state import state_shardings
  cfg, mesh, rules = trainer.model.config, trainer.mesh, trainer.rules
  layer_cls = EncoderLayer
  if cfg.remat_policy != "none":  # prevent_cse: no scan around it here to keep the recompute
    layer_cls = nn.remat(EncoderLayer, policy=_remat_policy(cfg.remat_policy), prevent_cse=True)
  layer = layer_cls(cfg, False)
  x = jax.ShapeDtypeStruct((micro_batch, trainer.shapes.num_frames, cfg.hidden_size), cfg.dtype)
  valid = jax.ShapeDtypeStruct(x.shape[:2], jnp.bool_)
  key = jax.random.key(0)
  rngs = {"params": key, "dropout": key, "layerdrop": key}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(lambda x, v: layer.init(rngs, x, v)["params"], x, valid)
  param_sharding = state_shardings(abstract, mesh, rules)
  act = batch_sharding(mesh)

  def forward_backward(params, x, valid, cotangent):
    def forward(params, x):
      return layer.apply({"params": params}, x, valid, rngs={"dropout": key, "layerdrop": key})[0]
    with nn.logical_axis_rules(rules):
      y, pullback = jax.vjp(forward, params, x)
      return y, pullback(cotangent)  # y is the next layer's input: without it XLA drops matmuls

  fn = jax.jit(forward_backward, in_shardings=(param_sharding, act, act, act),
               out_shardings=(act, (param_sharding, act)))
  abstract_x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=act)
  return fn, (with_shardings(abstract, param_sharding), abstract_x,
              jax.ShapeDtypeStruct(valid.shape, valid.dtype, sharding=act), abstract_x)


def corrected_cost(step: dict[str, float], layer: dict[str, float], layers: int,
                   micro_steps: int) -> dict[str, float | None]:
  """Whole-step flops / optimal_seconds from XLA's loop-bodies-once figures (see module doc)."""
  out = {}
  for key in ("flops", "optimal_seconds"):
    # libtpu reports a negative optimal_seconds when its cost model has no estimate (seen for
    # xlsr_300m on v5e-8: -70 s for the step, -7 s for one layer): no figure, not a wrong one.
    if step.get(key) is None or layer.get(key) is None or min(step[key], layer[key]) < 0:
      out[key] = None
    else:
      out[key] = micro_steps * (step[key] + (layers - 1) * layer[key])
  return out


def check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """The global batch, which must split evenly over data x fsdp and the micro-steps."""
  batch, accum = global_batch(config), config.train.grad_accum_steps
  shards = mesh.shape["data"] * mesh.shape["fsdp"] * accum
  if batch < 1 or batch % shards:
    raise PlanError(f"global batch of {batch} crops (data.batch_seconds={config.data.batch_seconds}) "
                    f"is not a multiple of data x fsdp x grad_accum_steps = {mesh.shape['data']} x "
                    f"{mesh.shape['fsdp']} x {accum}; use --batch_per_chip or --config.data.batch_seconds")
  return batch


def lower_step(trainer: Any, batch: int) -> tuple[Any, float]:
  """Trainer.train_step lowered on abstract state and batch (shapes and shardings only), seconds."""
  samples = trainer.shapes.num_samples
  state = with_shardings(trainer.abstract_state, trainer.state_sharding)
  inputs = {"waveform": jax.ShapeDtypeStruct((batch, samples), jnp.float32,
                                             sharding=trainer.batch_sharding["waveform"]),
            "lengths": jax.ShapeDtypeStruct((batch,), jnp.int32,
                                            sharding=trainer.batch_sharding["lengths"])}
  start = time.perf_counter()
  with jax.set_mesh(trainer.mesh):
    lowered = trainer.train_step.lower(state, inputs)
  return lowered, time.perf_counter() - start


def compile_lowered(lowered: Any, options: dict | None) -> tuple[Any, str | None, float]:
  """(compiled, None, seconds), or (None, the compiler's message, seconds) when it cannot fit."""
  start = time.perf_counter()
  try:
    return lowered.compile(options), None, time.perf_counter() - start
  except Exception as e:  # the TPU compiler reports a program that cannot fit in HBM this way
    if "RESOURCE_EXHAUSTED" not in str(e) and "hbm" not in str(e).lower():
      raise
    return None, str(e).strip().splitlines()[0][:2000], time.perf_counter() - start


def xla_figures(compiled: Any, trainer: Any, micro_batch: int, chips: int) -> dict[str, Any]:
  """XLA's per-chip flops and optimal_seconds, raw and corrected for the layer scan."""
  cost = _cost(compiled)
  start = time.perf_counter()
  layer_fn, layer_args = layer_program(trainer, micro_batch)
  with jax.set_mesh(trainer.mesh):
    layer_cost = _cost(layer_fn.lower(*layer_args).compile(COST_OPTIONS))
  layer_s = time.perf_counter() - start
  fixed = corrected_cost(cost, layer_cost, trainer.model.config.num_hidden_layers,
                         trainer.config.train.grad_accum_steps)
  per_chip = fixed["flops"]
  return dict(
      xla_raw=dict(flops_per_chip=cost.get("flops"), optimal_seconds=cost.get("optimal_seconds"),
                   bytes_accessed_per_chip=cost.get("bytes accessed"),
                   layer_flops_per_chip=layer_cost.get("flops"),
                   layer_optimal_seconds=layer_cost.get("optimal_seconds")),
      layer_compile_seconds=layer_s, xla_flops_per_chip=per_chip,
      xla_flops=None if per_chip is None else per_chip * chips,
      optimal_seconds=fixed["optimal_seconds"])


def profile_lengths(name: str, min_sample_size: int, count: int = 20_000) -> Any:
  """Utterance lengths (samples) of a documented length profile, those >= min_sample_size."""
  import numpy as np
  from data_pipelines import length_profiles
  if name not in length_profiles.NAMES:
    raise PlanError(f"--length_profile={name!r} is not one of {list(length_profiles.NAMES)}")
  lengths = length_profiles.draw(name, count, np.random.default_rng(0))
  return lengths[lengths >= min_sample_size]


def useful_flops_per_row(config: ml_collections.ConfigDict, model_cfg: Any, lengths: Any,
                         crop: int, sample: int = 400) -> float:
  """Mean FLOPs of the real audio of one row when utterances of `lengths` are cut to `crop`."""
  import numpy as np
  picked = np.asarray(lengths)[:sample]
  return float(np.mean([flops_lib.row_train_flops(model_cfg, config.objective, int(min(n, crop)))
                        for n in picked])) if len(picked) else 0.0


def plan_buckets(config: ml_collections.ConfigDict, topology: Topology, cost: bool = True,
                 profile: str = "xlsr_mix") -> dict[str, Any]:
  """Compile every duration bucket's step (config.data.bucket_seconds) for `topology`.

  Memory is the largest bucket's; the step estimate and MFU are averages over the buckets
  weighted by how often a step uses each for the `profile` length mix (data_pipelines/
  length_profiles.py); useful MFU counts only the FLOPs of each row's real audio.
  """
  import copy
  import numpy as np
  from data_pipelines import buckets as buckets_lib
  from xlsr_jax.training.loop import bucket_spec
  m, accum = config.mesh, config.train.grad_accum_steps
  found = topology_devices(topology, m.dcn_data)
  from xlsr_jax.sharding.mesh import make_mesh
  mesh = make_mesh(m.data, m.fsdp, m.tensor, dcn_data=m.dcn_data, devices=found)
  spec = bucket_spec(config, multiple=mesh.shape["data"] * mesh.shape["fsdp"] * accum)
  lengths = profile_lengths(profile, config.data.min_sample_size)
  index = buckets_lib.assign(lengths, spec)
  counts = np.bincount(index[index >= 0], minlength=spec.num_buckets)
  probs = buckets_lib.step_probabilities({"all": 1.0}, {"all": counts / max(counts.sum(), 1)}, spec)
  model_cfg = model_config_from(config)
  results = []
  for b, (crop, rows) in enumerate(zip(spec.lengths, spec.batch_sizes)):
    one = copy.deepcopy(config)
    one.data.bucket_seconds = []
    one.data.max_sample_size = crop
    one.data.batch_seconds = rows * crop / SAMPLE_RATE
    r = plan(one, topology, cost)
    r["step_probability"] = float(probs[b])
    r["useful_flops"] = rows * useful_flops_per_row(config, model_cfg, lengths[index == b], crop)
    results.append(r)
  fits = all(r["memory"]["fits"] for r in results)
  largest = max(results, key=lambda r: r["memory"].get("total_bytes", float("inf")))
  out: dict[str, Any] = dict(
      topology=topology.name, model=config.model.preset, length_profile=profile,
      bucket_mode=spec.mode, buckets=results, fits=fits, largest_memory=largest["memory"],
      dropped_share=float(np.mean(index < 0)))
  times = [r.get("optimal_seconds") for r in results]
  if all(times):
    chips, peak = results[0]["chips"], results[0]["peak_flops_per_chip"]
    step = float(sum(p * t for p, t in zip(probs, times)))
    flops = float(sum(p * r["analytic_flops"]["total"] for p, r in zip(probs, results)))
    useful = float(sum(p * r["useful_flops"] for p, r in zip(probs, results)))
    out.update(step_seconds=step, estimated_mfu=flops / (step * chips * peak),
               estimated_useful_mfu=useful / (step * chips * peak))
  return out


def format_bucket_plan(r: dict[str, Any]) -> str:
  """The human-readable report of a `plan_buckets` result."""
  lines = [f"buckets         {r['model']} on {r['topology']}, {r['bucket_mode']} mode, length "
           f"profile {r['length_profile']} ({100 * r['dropped_share']:.1f}% of its utterances "
           "too short for any bucket)"]
  for b in r["buckets"]:
    mem = b["memory"]
    memory = (f"{_gib(mem['total_bytes'])} / chip" if mem.get("total_bytes") is not None
              else "DOES NOT FIT")
    est = f", est. {b['optimal_seconds']:.3f} s" if b.get("optimal_seconds") else ""
    lines.append(f"  {b['num_samples'] / SAMPLE_RATE:>5g} s x {b['global_batch']:>5} crops: "
                 f"{100 * b['step_probability']:5.1f}% of steps, {memory}{est}")
  lines.append(f"memory          largest bucket {_memory_lines(r['largest_memory'])[1]}"
               if r["largest_memory"].get("total_bytes") is not None else
               "memory          a bucket DOES NOT FIT")
  if "step_seconds" in r:
    lines.append(f"step time       {r['step_seconds']:.3f} s averaged over the bucket mix")
    lines.append(f"est. MFU        {100 * r['estimated_mfu']:.1f}% on all frames, "
                 f"{100 * r['estimated_useful_mfu']:.1f}% useful (real audio only)")
  return "\n".join(lines)


def plan(config: ml_collections.ConfigDict, topology: Topology, cost: bool = True,
         profile: str | None = None) -> dict[str, Any]:
  """Compile the train step of `config` for `topology` and return the plan's figures (JSON-able).

  Memory comes from a compile with libtpu's default options (what training runs); FLOPs and the
  step-time estimate from a second compile with COST_OPTIONS (skipped when `cost` is False).
  """
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.state import build_trainer
  slices, m = config.mesh.dcn_data, config.mesh
  found = topology_devices(topology, slices)
  chips, kind = len(found), found[0].device_kind
  hbm = devices_lib.lookup(kind).hbm_bytes
  peak = devices_lib.peak_flops_per_device(kind, config.train.peak_tflops_per_device)
  mesh = make_mesh(m.data, m.fsdp, m.tensor, dcn_data=slices, devices=found)
  batch, samples = check_batch(config, mesh), config.data.max_sample_size
  trainer = build_trainer(config, mesh, samples)
  lowered, lower_s = lower_step(trainer, batch)
  compiled, error, compile_s = compile_lowered(lowered, None)

  model_cfg, shapes, accum = trainer.model.config, trainer.shapes, config.train.grad_accum_steps
  size = flops_lib.StepSize(batch, samples, shapes.max_masked, config.objective.num_negatives)
  analytic = flops_lib.train_step_flops(model_cfg, size)
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(trainer.abstract_state.params)))
  result: dict[str, Any] = dict(
      topology=topology.name, topology_shape=topology.topology_name, device_kind=kind,
      chips=chips, slices=slices, mesh=dict(mesh.shape), global_batch=batch,
      batch_per_shard=batch // (mesh.shape["data"] * mesh.shape["fsdp"] * accum),
      grad_accum_steps=accum, num_samples=samples, num_frames=shapes.num_frames,
      max_masked=shapes.max_masked, model=config.model.preset, parameters=params,
      dtype=str(jnp.dtype(model_cfg.dtype)), remat_policy=model_cfg.remat_policy,
      peak_flops_per_chip=peak, hbm_bytes=hbm, analytic_flops=analytic, lower_seconds=lower_s,
      compile_seconds=compile_s, compile_error=error,
      memory=memory_summary(compiled.memory_analysis(), hbm) if compiled else dict(fits=False,
                                                                                  hbm_bytes=hbm))
  if compiled is None or not cost:
    return result
  del compiled  # the cost compile below is as large
  cost_compiled, cost_error, cost_s = compile_lowered(lowered, COST_OPTIONS)
  result.update(cost_compile_seconds=cost_s, cost_compiler_options=COST_OPTIONS,
                cost_compile_error=cost_error)
  if cost_compiled is None:
    return result
  result["cost_memory"] = memory_summary(cost_compiled.memory_analysis(), hbm)
  result.update(xla_figures(cost_compiled, trainer, batch // accum, chips))
  optimal = result["optimal_seconds"]
  result["estimated_mfu"] = analytic["total"] / (optimal * chips * peak) if optimal else None
  if profile and optimal:  # the share of that work that was real audio, for a length mix
    lengths = profile_lengths(profile, config.data.min_sample_size)
    useful = batch * useful_flops_per_row(config, model_cfg, lengths, samples)
    result.update(length_profile=profile, estimated_useful_mfu=useful / (optimal * chips * peak))
  return result


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
  from xlsr_jax.training.defaults import get_default_config
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
  args = parser.parse_args(rest)
  config = load_validated(path, overrides, get_default_config(), "--config=experiments/<name>.py")
  model_config_from(config)
  topology = parse_topology(args.topology)
  if args.batch_per_chip is not None:
    set_batch_per_chip(config, args.batch_per_chip, topology.chips * config.mesh.dcn_data)
  from xlsr_jax.training import validation
  validation.validate(config)  # ranges and relations; the mesh against the topology is checked in plan()
  return config, topology, args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "JAX_PLATFORMS" not in os.environ:  # the plan needs no accelerator, only libtpu's compiler
    jax.config.update("jax_platforms", "cpu")
  try:
    config, topology, args = parse_args(argv)
    if config.data.bucket_seconds:
      result = plan_buckets(config, topology, cost=not args.skip_cost, profile=args.length_profile)
      text = "\n\n".join([*(format_plan(b) for b in result["buckets"]), format_bucket_plan(result)])
    else:
      result = plan(config, topology, cost=not args.skip_cost, profile=args.length_profile)
      text = format_plan(result)
  except (ConfigError, PlanError) as e:
    print(f"plan error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1) if args.json else text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
