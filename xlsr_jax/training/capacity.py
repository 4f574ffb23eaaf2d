"""Capacity and cost of the real train step, compiled ahead of time for a TPU topology on a CPU machine.

The library behind `python -m xlsr_jax.plan` (the command line and report text live there; the
topology table in `xlsr_jax.sharding.topologies`); benchmarks use its lowering and cost pieces.

`plan` builds the Trainer on a mesh over the topology's (virtual) devices, lowers
`Trainer.train_step` on abstract state and batch (shapes and shardings only, nothing allocated),
compiles it with libtpu and returns per-chip memory against the chip's HBM, FLOPs per step (XLA's
and the analytic count), the compiler's step-time estimate and the MFU it implies.

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
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_pipelines import buckets as buckets_lib
from data_pipelines import length_profiles
from data_pipelines.features import SAMPLE_RATE
from xlsr_jax.config_loading import model_config_from
from xlsr_jax.models.transformer import EncoderLayer, _remat_policy
from xlsr_jax.objectives import make_objective
from xlsr_jax.sharding.mesh import batch_sharding, make_mesh
from xlsr_jax.sharding.topologies import PlanError, Topology, topology_devices
from xlsr_jax.training import devices as devices_lib
from xlsr_jax.training import flops as flops_lib
from xlsr_jax.training.batch_size import batch_multiple, bucket_spec, global_batch_rows

# libtpu options of the cost compile: no windowed-einsum loops (see the module docstring).
COST_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def set_batch_per_chip(config: ml_collections.ConfigDict, per_chip: float, chips: int) -> None:
  """Global batch = per_chip x chips (MaxText's per_device_batch_size; may be fractional)."""
  crops = int(round(per_chip * chips))
  if crops < 1 or not math.isclose(crops, per_chip * chips):
    raise PlanError(f"--batch_per_chip={per_chip} x {chips} chips is not a whole number of crops >= 1")
  config.data.batch_seconds = crops * config.data.max_sample_size / SAMPLE_RATE


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their sharding, keeping the logical-axis boxes of `abstract`."""
  def attach(sharding, leaf):
    value = leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf
    if isinstance(value, optax.MaskedNode):  # a frozen parameter's (empty) optimizer slot
      return leaf
    shaped = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
    return leaf.replace_boxed(shaped) if isinstance(leaf, nn.meta.AxisMetadata) else shaped
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
  from xlsr_jax.training.state import state_shardings  # (the trainer stack: only when planning)
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
  act = batch_sharding(mesh, rules)

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
  batch, accum = global_batch_rows(config), config.train.grad_accum_steps
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
  layer, layer_s = layer_cost(trainer, micro_batch)
  fixed = corrected_cost(cost, layer, trainer.model.config.num_hidden_layers,
                         trainer.config.train.grad_accum_steps)
  per_chip = fixed["flops"]
  return dict(
      xla_raw=dict(flops_per_chip=cost.get("flops"), optimal_seconds=cost.get("optimal_seconds"),
                   bytes_accessed_per_chip=cost.get("bytes accessed"),
                   layer_flops_per_chip=layer.get("flops"),
                   layer_optimal_seconds=layer.get("optimal_seconds")),
      layer_compile_seconds=layer_s, xla_flops_per_chip=per_chip,
      xla_flops=None if per_chip is None else per_chip * chips,
      optimal_seconds=fixed["optimal_seconds"])


def profile_lengths(name: str, min_sample_size: int, count: int = 20_000) -> Any:
  """Utterance lengths (samples) of a documented length profile, those >= min_sample_size."""
  if name not in length_profiles.NAMES:
    raise PlanError(f"--length_profile={name!r} is not one of {list(length_profiles.NAMES)}")
  lengths = length_profiles.draw(name, count, np.random.default_rng(0))
  return lengths[lengths >= min_sample_size]


def useful_flops_per_row(objective: Any, lengths: Any, crop: int, sample: int = 400) -> float:
  """Mean FLOPs of the real audio of one row when utterances of `lengths` are cut to `crop`
  (objective: the trainer's objectives.Objective)."""
  picked = np.asarray(lengths)[:sample]
  return float(np.mean([flops_lib.row_train_flops(objective, int(min(n, crop)))
                        for n in picked])) if len(picked) else 0.0


def layer_cost(trainer: Any, micro_batch: int) -> tuple[dict[str, float], float]:
  """XLA's per-chip cost of one scanned encoder layer's forward + backward (COST_OPTIONS), seconds."""
  start = time.perf_counter()
  fn, args = layer_program(trainer, micro_batch)
  with jax.set_mesh(trainer.mesh):
    cost = _cost(fn.lower(*args).compile(COST_OPTIONS))
  return cost, time.perf_counter() - start


def layers_method_estimate(reference: dict[str, Any], layer: dict[str, float], samples_per_step: int,
                           layers: int, micro_steps: int) -> dict[str, float | None]:
  """A bucket's step flops / optimal_seconds from its own layer cost and the reference bucket's
  non-layer part (raw step minus its one counted layer body) scaled by samples per step."""
  raw = reference["xla_raw"]
  scale = samples_per_step / (reference["global_batch"] * reference["num_samples"])
  out = {}
  for key, raw_key, layer_key in (("flops", "flops_per_chip", "layer_flops_per_chip"),
                                  ("optimal_seconds", "optimal_seconds", "layer_optimal_seconds")):
    values = (raw.get(raw_key), raw.get(layer_key), layer.get(key))
    if any(v is None or v < 0 for v in values):  # libtpu's "no estimate" (see corrected_cost)
      out[key] = None
    else:
      out[key] = micro_steps * ((values[0] - values[1]) * scale + layers * values[2])
  return out


def plan_buckets(config: ml_collections.ConfigDict, topology: Topology, cost: bool = True,
                 profile: str = "xlsr_mix", method: str = "layers") -> dict[str, Any]:
  """Plan every duration bucket's step (config.data.bucket_seconds) for `topology`.

  The step estimate and MFU are averages over the buckets weighted by how often a step uses each
  for the `profile` length mix (data_pipelines/length_profiles.py); useful MFU counts only the
  FLOPs of each row's real audio. Memory is the largest bucket's.

  method="full" compiles every bucket's whole program twice (memory, cost): for xlsr_2b about
  25 min of one CPU core per bucket. method="layers" does that for the largest bucket only (its
  memory is the plan's: with the audio seconds per step fixed, attention's rows x frames^2 grows
  with the crop) and, for every other bucket, compiles only the scanned encoder layer's forward +
  backward (minutes). A bucket's estimate is then layers x its layer cost plus the largest
  bucket's non-layer part (feature encoder, quantizer, loss, update: ~4% of xlsr_2b's step)
  scaled by samples per step; exact for the largest bucket, and measured against the full
  method for the smallest (README, TPU plan).
  """
  from xlsr_jax.training.state import build_trainer  # (the trainer stack: only when planning)
  if method not in ("layers", "full"):
    raise PlanError(f"--bucket_method={method!r}: expected layers or full")
  m, accum = config.mesh, config.train.grad_accum_steps
  found = topology_devices(topology, m.dcn_data)
  mesh = make_mesh(m.data, m.fsdp, m.tensor, dcn_data=m.dcn_data, devices=found)
  spec = bucket_spec(config, batch_multiple(mesh.shape["data"] * mesh.shape["fsdp"], accum, 1))
  lengths = profile_lengths(profile, config.data.min_sample_size)
  index = buckets_lib.assign(lengths, spec)
  counts = buckets_lib.bucket_counts(lengths, spec)
  probs = buckets_lib.step_probabilities({"all": 1.0}, {"all": counts / max(counts.sum(), 1)}, spec)
  model_cfg = model_config_from(config)
  objective = make_objective(model_cfg, config.objective)

  def bucket_config(b: int) -> ml_collections.ConfigDict:
    one = copy.deepcopy(config)
    one.data.bucket_seconds = []
    one.data.max_sample_size = spec.lengths[b]
    one.data.batch_seconds = spec.batch_sizes[b] * spec.lengths[b] / SAMPLE_RATE
    return one

  largest_b = spec.num_buckets - 1
  reference = plan(bucket_config(largest_b), topology, cost) if method == "layers" else None
  results = []
  for b, (crop, rows) in enumerate(zip(spec.lengths, spec.batch_sizes)):
    if b == largest_b and reference is not None:
      r = reference
    elif method == "full":
      r = plan(bucket_config(b), topology, cost)
    else:
      one = bucket_config(b)
      trainer = build_trainer(one, mesh, crop)
      shapes = trainer.shapes
      size = flops_lib.StepSize(rows, crop, shapes.max_masked, config.objective.num_negatives)
      r = dict(global_batch=rows, num_samples=crop, num_frames=shapes.num_frames,
               max_masked=shapes.max_masked, chips=reference["chips"],
               peak_flops_per_chip=reference["peak_flops_per_chip"],
               analytic_flops=flops_lib.train_step_flops(
                   model_cfg, size, trainer.objective.forward_flops(size)),
               memory=dict(not_compiled="layers method: the largest bucket's memory is the plan's"))
      if cost and "xla_raw" in reference:
        layer, seconds = layer_cost(trainer, rows // accum)
        fixed = layers_method_estimate(reference, layer, rows * crop,
                                       model_cfg.num_hidden_layers, accum)
        r.update(layer_compile_seconds=seconds, estimate_method="layers",
                 xla_raw=dict(layer_flops_per_chip=layer.get("flops"),
                              layer_optimal_seconds=layer.get("optimal_seconds")),
                 xla_flops_per_chip=fixed["flops"], optimal_seconds=fixed["optimal_seconds"])
        if fixed["optimal_seconds"]:
          r["estimated_mfu"] = r["analytic_flops"]["total"] / (
              fixed["optimal_seconds"] * r["chips"] * r["peak_flops_per_chip"])
    r["step_probability"] = float(probs[b])
    r["useful_flops"] = rows * useful_flops_per_row(objective, lengths[index == b], crop)
    results.append(r)
  compiled = [r["memory"] for r in results if "not_compiled" not in r["memory"]]
  fits = all(mem["fits"] for mem in compiled)
  largest = max(compiled, key=lambda mem: mem.get("total_bytes", float("inf")))
  out: dict[str, Any] = dict(
      topology=topology.name, model=config.model.preset, length_profile=profile,
      bucket_mode=spec.mode, bucket_method=method, buckets=results, fits=fits,
      largest_memory=largest, dropped_share=float(np.mean(index < 0)))
  times = [r.get("optimal_seconds") for r in results]
  if all(times):
    chips, peak = results[0]["chips"], results[0]["peak_flops_per_chip"]
    step = float(sum(p * t for p, t in zip(probs, times)))
    flops = float(sum(p * r["analytic_flops"]["total"] for p, r in zip(probs, results)))
    useful = float(sum(p * r["useful_flops"] for p, r in zip(probs, results)))
    out.update(step_seconds=step, estimated_mfu=flops / (step * chips * peak),
               estimated_useful_mfu=useful / (step * chips * peak))
  return out


def plan(config: ml_collections.ConfigDict, topology: Topology, cost: bool = True,
         profile: str | None = None) -> dict[str, Any]:
  """Compile the train step of `config` for `topology` and return the plan's figures (JSON-able).

  Memory comes from a compile with libtpu's default options (what training runs); FLOPs and the
  step-time estimate from a second compile with COST_OPTIONS (skipped when `cost` is False).
  """
  from xlsr_jax.training.state import build_trainer  # (the trainer stack: only when planning)
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
  analytic = flops_lib.train_step_flops(model_cfg, size, trainer.objective.forward_flops(size))
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(trainer.abstract_state.params)))
  result: dict[str, Any] = dict(
      topology=topology.name, topology_shape=topology.topology_name, device_kind=kind,
      chips=chips, slices=slices, mesh=dict(mesh.shape), global_batch=batch,
      batch_per_shard=batch // (mesh.shape["data"] * mesh.shape["fsdp"] * accum),
      grad_accum_steps=accum, num_samples=samples, num_frames=shapes.num_frames,
      max_masked=shapes.max_masked, model=config.model.preset, objective=trainer.objective.name,
      frontend=model_cfg.frontend, parameters=params,
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
    useful = batch * useful_flops_per_row(trainer.objective, lengths, samples)
    result.update(length_profile=profile, estimated_useful_mfu=useful / (optimal * chips * peak))
  return result
