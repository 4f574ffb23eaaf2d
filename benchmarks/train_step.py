"""Pretraining-step speed: our jitted `Trainer.step` against HF `Wav2Vec2ForPreTraining` + torch AdamW,
and our BEST-RQ step against our wav2vec 2.0 step on the same encoder.

  python -m benchmarks.train_step                          # tiny and base, batch 4 x 4 s
  python -m benchmarks.train_step --presets=base --reps=9 --warmup=3
  python -m benchmarks.train_step --objectives=wav2vec2,best_rq,best_rq_fbank

Both sides train the same configuration (our preset, every dropout and layerdrop set to 0, HF config
from `config_to_hf`) on the same float32 waveforms [batch, samples], forward + loss + backward +
AdamW update, on CPU. The reference gets the mask and negatives our step draws at step 0 (in HF's
layout); ours draws its own each step, which changes no shape (it computes on the static bound M).

Each side runs in its own process (its own peak memory, its own thread pool), and their timed
repetitions alternate, so load from elsewhere on a shared machine hits both. Per repetition the
step is run `n` times (n chosen after warm-up so a repetition lasts about --rep_seconds); the table
gives the median and spread of the per-step time over repetitions.

Memory: peak resident set size of each worker process (getrusage ru_maxrss), which includes its
runtime (jax + XLA, or torch + transformers) and, for ours, XLA compilation; "after import" is
the RSS once the libraries are imported, before any model exists.
Peak: float32 matmul [n, n] @ [n, n] with jnp.dot and torch.mm in the same run; the better rate.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from absl import app, flags

from benchmarks import common
from data_pipelines.features import SAMPLE_RATE

_PRESETS = flags.DEFINE_list("presets", ["tiny", "base"], "Model presets to time.")
_BATCH = flags.DEFINE_integer("batch", 4, "Utterances per step.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Crop length in seconds (16 kHz).")
_REPS = flags.DEFINE_integer("reps", 7, "Timed repetitions per side.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per side after compilation.")
_REP_SECONDS = flags.DEFINE_float("rep_seconds", 2.0, "Target length of one repetition.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "n of the n x n float32 matmul for the peak.")
_SEED = flags.DEFINE_integer("seed", 0, "Waveform seed.")
_SET = flags.DEFINE_multi_string("set", [], "Config override for our side, e.g. "
                                  "--set=model.attention_impl=manual (dropouts stay 0 unless set).")
_PROFILE = flags.DEFINE_bool("profile", False, "Also trace one of our steps (jax.profiler) and "
                              "print its time per model component and its slowest ops.")
_OBJECTIVES = flags.DEFINE_list(
    "objectives", ["wav2vec2", "best_rq"],
    "Objectives our side times, each in its own worker with its repetitions alternating with the "
    "others' (the reference is wav2vec 2.0): wav2vec2, best_rq, best_rq_fbank (the filterbank "
    "frontend instead of the CNN).")
# Our side's config overrides per objective (the first listed is the one the reference runs).
OBJECTIVE_OVERRIDES = {"wav2vec2": [], "best_rq": ["objective.name=best_rq"],
                       "best_rq_fbank": ["objective.name=best_rq", "model.frontend=fbank"]}
_WORKER = flags.DEFINE_enum("worker", None, ["ours", "ref"], "Internal: run as a worker process.")



# ------------------------------------------------------------------- where our step's time goes

# (substring of an HLO op's op_name, component); the first match wins, "transpose(" marks backward.
COMPONENTS = (("feature_extractor", "feature encoder"), ("pos_conv_embed", "positional conv"),
              ("wav2vec2/encoder", "transformer layers"), ("feature_projection", "feature projection"),
              ("quantizer", "quantizer"), ("project_", "loss projections"),
              ("while/body", "loss, gathers (in the micro-batch loop)"))


def op_components(hlo_text: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (component, op_name) from the compiled module's metadata (leaf ops).

  Instructions without an op_name (buffer initialisation and copies that XLA adds, such as the
  zero-filled stacked buffers of the layer scan) are labelled by their opcode and shape.
  """
  out = {}
  pattern = r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(([^\n]*)$'
  for match in re.finditer(pattern, hlo_text, re.M):
    name, shape, opcode, rest = match.groups()
    if opcode in ("while", "call", "conditional", "parameter", "constant", "get-tuple-element",
                  "tuple", "bitcast"):  # containers and free ops: what they run is counted itself
      continue
    op_name = re.search(r'op_name="([^"]*)"', rest)
    if op_name is None:
      out[name] = (f"no metadata ({opcode})", f"{name} {shape}")
      continue
    op_name = op_name.group(1)
    label = next((c for key, c in COMPONENTS if key in op_name), "optimizer, masks (outside the loop)")
    out[name] = (label + (" [bwd]" if "transpose(" in op_name else ""), op_name)
  return out


def trace_breakdown(trace_dir: str, hlo_text: str, steps: int) -> dict:
  """ms per step per component and the 12 slowest ops, from a jax.profiler perfetto trace."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  names = op_components(hlo_text)
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in names:
      per_op[e["name"]] += e.get("dur", 0) / 1e3 / steps
  per_component = collections.Counter()
  for name, ms in per_op.items():
    per_component[names[name][0]] += ms
  top = [(name, ms, names[name][1][-100:]) for name, ms in per_op.most_common(12)]
  return dict(components=dict(per_component.most_common()), top_ops=top)


# ----------------------------------------------------------------------------- ours (JAX) worker

def ours_worker() -> None:
  import jax
  import numpy as np
  after_import = common.rss_mib()
  from xlsr_jax.training import capacity
  from xlsr_jax.checkpoints.hf_layout import config_to_hf
  from xlsr_jax.config_loading import apply_override
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.objectives import wav2vec2 as w2v
  from xlsr_jax.training import flops, train_step as ts
  from xlsr_jax.training.config_defaults import get_default_config
  from xlsr_jax.training.state import build_trainer
  run = {}

  def setup(preset: str, batch: int, samples: int, seed: int, data_path: str,
            overrides: list[str]) -> dict:
    # A persistent cache in the run's temporary directory, so the step compiled here for its cost
    # analysis is loaded, not compiled again, by the first Trainer.step call.
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(data_path), "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    config = get_default_config()
    config.model.preset = preset
    for field in common.DROPOUT_FIELDS:
      config.model[field] = 0.0
    for item in overrides:
      key, _, value = item.partition("=")
      apply_override(config, key, value)
    trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), samples)
    state = trainer.create_state()
    wave = np.random.default_rng(seed).standard_normal((batch, samples)).astype(np.float32)
    lengths = np.full((batch,), samples, np.int32)
    # The masks the step itself draws at step 0 (same key derivation as train_step.step_fn).
    mask_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)[0]
    draws = jax.device_get(w2v.sample_draws(mask_key, jax.numpy.asarray(lengths), trainer.model.config,
                                           config.objective, trainer.shapes))
    np.savez(data_path, waveform=wave, mask_time=draws.mask_time, masked_indices=draws.masked_indices,
             valid=draws.valid, negative_indices=draws.negative_indices)
    batch_arrays = {"waveform": jax.device_put(wave, trainer.batch_sharding["waveform"]),
                    "lengths": jax.device_put(lengths, trainer.batch_sharding["lengths"])}
    start = time.perf_counter()
    with jax.set_mesh(trainer.mesh):  # as Trainer.step traces it
      compiled = trainer.train_step.lower(state, batch_arrays).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model_cfg = trainer.model.config
    # XLA counts a while loop's body once: add the other layers of the scan (as xlsr_jax.training.capacity does).
    layer_fn, layer_args = capacity.layer_program(trainer, batch // config.train.grad_accum_steps)
    with jax.set_mesh(trainer.mesh):
      layer_cost = layer_fn.lower(*layer_args).compile().cost_analysis()
    layer_cost = layer_cost[0] if isinstance(layer_cost, (list, tuple)) else layer_cost
    xla_flops = capacity.corrected_cost(cost, layer_cost, model_cfg.num_hidden_layers,
                                        config.train.grad_accum_steps)["flops"]
    memory = compiled.memory_analysis()
    size = flops.StepSize(batch=batch, num_samples=samples, num_masked=trainer.shapes.max_masked,
                          num_negatives=config.objective.num_negatives)
    run.update(trainer=trainer, state=state, batch=batch_arrays, hlo=compiled.as_text(),
               trace_dir=os.path.join(os.path.dirname(data_path), f"trace_{preset}"))
    opt = config.optimizer
    return dict(hf_config=config_to_hf(model_cfg), compile_s=compile_s,
                optimizer=dict(peak_lr=opt.peak_lr, warmup_steps=opt.warmup_steps, b1=opt.b1,
                               b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay),
                xla_flops=float(xla_flops), xla_flops_raw=float(cost["flops"]),
                xla_layer_flops=float(layer_cost["flops"]), layers=model_cfg.num_hidden_layers,
                temp_mib=memory.temp_size_in_bytes / 2**20,
                model_flops=float(flops.train_step_flops(
                    model_cfg, size, trainer.objective.forward_flops(size))["total"]),
                program_flops=float(flops.TRAIN_MULTIPLIER * sum(
                    flops.forward_flops(model_cfg, size, similarity_matrix=True).values()))
                if trainer.objective.name == "wav2vec2" else None,
                objective=trainer.objective.name,
                remat_policy=model_cfg.remat_policy,
                frames=trainer.shapes.num_frames, max_masked=trainer.shapes.max_masked,
                devices=f"{len(jax.devices())} x {jax.devices()[0].device_kind}")

  def one_step():
    run["state"], metrics = run["trainer"].step(run["state"], run["batch"])
    jax.block_until_ready((run["state"], metrics))
    run["loss"] = float(metrics["loss"])

  def matmul(n: int, reps: int) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    dot = jax.jit(jax.numpy.dot)
    dot(a, a).block_until_ready()
    best = min(common.time_calls(lambda: dot(a, a).block_until_ready(), 1) for _ in range(reps))
    return dict(flops_per_s=2 * n**3 / best)

  def profile(count: int) -> dict:
    with jax.profiler.trace(run["trace_dir"], create_perfetto_trace=True):
      seconds = common.time_calls(one_step, count)
    return dict(seconds=seconds, **trace_breakdown(run["trace_dir"], run["hlo"], count))

  common.serve(dict(
      setup=setup, matmul=matmul, profile=profile,
      steps=lambda count: dict(seconds=common.time_calls(one_step, count), loss=run["loss"]),
      quit=lambda: dict(peak_rss_mib=common.peak_rss_mib(), after_import_mib=after_import)))


# ------------------------------------------------------------------------- reference (HF) worker

def ref_worker() -> None:
  import numpy as np
  import torch
  import transformers
  after_import = common.rss_mib()
  torch.set_num_threads(os.cpu_count())
  run = {}

  def setup(hf_config: dict, data_path: str, optimizer: dict, foreach: bool | None = None) -> dict:
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**hf_config)).train()
    model.set_gumbel_temperature(2.0)
    data = np.load(data_path)
    mask, idx, valid, neg = (data[k] for k in ("mask_time", "masked_indices", "valid", "negative_indices"))
    batch, frames = mask.shape
    # Negatives in HF's layout: global frame indices [batch, frames, K] at the masked frames.
    ref_neg = np.zeros((batch, frames, neg.shape[-1]), np.int64)
    for b in range(batch):
      n = valid[b].sum()
      ref_neg[b, idx[b, :n]] = idx[b][neg[b, :n]] + b * frames
    # Our optimizer's settings and warmup (optax's linear warmup from 0; no clipping by default),
    # so both sides take the same steps (a constant 3e-4 from step 0 made base diverge to NaN).
    opt = optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt["peak_lr"], betas=(opt["b1"], opt["b2"]),
                                  eps=opt["eps"], weight_decay=opt["weight_decay"], foreach=foreach)
    warmup = max(opt["warmup_steps"], 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(k / warmup, 1.0))
    run.update(model=model, optimizer=optimizer, scheduler=scheduler, wave=torch.from_numpy(data["waveform"]),
               mask=torch.from_numpy(mask), neg=torch.from_numpy(ref_neg), masked=float(valid.sum()))
    return dict(threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                attention=model.config._attn_implementation, torch=torch.__version__,
                transformers=transformers.__version__)

  def one_step():
    model, optimizer = run["model"], run["optimizer"]
    optimizer.zero_grad(set_to_none=True)
    out = model(run["wave"], mask_time_indices=run["mask"], sampled_negative_indices=run["neg"])
    (out.loss / run["masked"]).backward()
    optimizer.step()
    run["scheduler"].step()
    run["loss"] = out.loss.item() / run["masked"]

  def matmul(n: int, reps: int) -> dict:
    a = torch.randn(n, n)
    torch.mm(a, a)
    best = min(common.time_calls(lambda: torch.mm(a, a), 1) for _ in range(reps))
    return dict(flops_per_s=2 * n**3 / best)

  common.serve(dict(
      setup=setup, matmul=matmul,
      steps=lambda count: dict(seconds=common.time_calls(one_step, count), loss=run["loss"]),
      quit=lambda: dict(peak_rss_mib=common.peak_rss_mib(), after_import_mib=after_import)))


# ------------------------------------------------------------------------------------ the parent

def measure(preset: str, batch: int, samples: int, data_dir: str) -> dict:
  """Sets up both workers for one preset, alternates their timed repetitions, and closes them."""
  data_path = os.path.join(data_dir, f"{preset}.npz")
  args = [f"--batch={batch}", f"--seconds={samples / SAMPLE_RATE}"]
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")  # this compares CPU against CPU; libtpu may be installed
  ours = common.Worker("ours", "benchmarks.train_step", args + ["--worker=ours"], env=env)
  info = ours.call("setup", preset=preset, batch=batch, samples=samples, seed=_SEED.value,
                   data_path=data_path, overrides=_SET.value)
  ref = common.Worker("ref", "benchmarks.train_step", args + ["--worker=ref"])
  info.update(ref.call("setup", hf_config=info["hf_config"], data_path=data_path,
                       optimizer=info["optimizer"]))
  sides = {"ours": ours, "ref": ref}
  info["objectives"] = {}
  for name in _OBJECTIVES.value:
    if name == "wav2vec2":
      continue
    worker = common.Worker(f"ours {name}", "benchmarks.train_step", args + ["--worker=ours"], env=env)
    info["objectives"][name] = worker.call(
        "setup", preset=preset, batch=batch, samples=samples, seed=_SEED.value,
        data_path=os.path.join(data_dir, f"{preset}_{name}.npz"),
        overrides=_SET.value + OBJECTIVE_OVERRIDES[name])
    sides[name] = worker
  counts, times, losses = {}, {name: [] for name in sides}, {}
  for name, worker in sides.items():
    first = worker.call("steps", count=1)["seconds"]  # ours: includes the jit-cache compile
    warm = [worker.call("steps", count=1)["seconds"] for _ in range(max(_WARMUP.value, 1))]
    counts[name] = max(1, round(_REP_SECONDS.value / min(warm)))
    info[f"{name}_first_step_s"] = first
  info["load_before"] = common.machine_load()
  for _ in range(_REPS.value):
    for name, worker in sides.items():
      reply = worker.call("steps", count=counts[name])
      times[name].append(reply["seconds"])
      losses[name] = reply["loss"]
  info["load_after"] = common.machine_load()
  peaks = {name: worker.call("matmul", n=_MATMUL.value, reps=5)["flops_per_s"]
           for name, worker in sides.items()}
  if _PROFILE.value:
    info["profile"] = ours.call("profile", count=1)
  memory = {name: worker.close() for name, worker in sides.items()}
  return dict(info=info, counts=counts, times={k: common.spread(v) for k, v in times.items()},
              losses=losses, peaks=peaks, memory=memory)


def report(preset: str, batch: int, samples: int, r: dict) -> str:
  info, peak = r["info"], max(r["peaks"].values())
  audio = batch * samples / SAMPLE_RATE
  lines = [f"\n== {preset}: batch {batch} x {samples / SAMPLE_RATE:g} s ({samples} samples, "
           f"{info['frames']} frames, M = {info['max_masked']}) ==",
           f"{'side':<6}{'ms/step':>9}{'IQR':>17}{'min-max':>17}{'audio s/s':>10}{'GFLOP/s':>9}"
           f"{'% peak':>8}{'peak RSS':>10}{'after import':>14}{'steps x reps':>14}"]
  for name in ("ours", "ref"):
    t, mem, count = r["times"][name], r["memory"][name], r["counts"][name]
    iqr = f"{1e3 * t['q1']:.1f}-{1e3 * t['q3']:.1f}"
    span = f"{1e3 * t['min']:.1f}-{1e3 * t['max']:.1f}"
    reps = f"{count} x {t['n']}"
    achieved = info["model_flops"] / t["median"]
    lines.append(
        f"{name:<6}{1e3 * t['median']:>9.1f}{iqr:>17}{span:>17}{audio / t['median']:>10.2f}"
        f"{achieved / 1e9:>9.1f}{100 * achieved / peak:>7.1f}%{mem['peak_rss_mib']:>7.0f} MiB"
        f"{mem['after_import_mib']:>10.0f} MiB{reps:>14}")
  ours_t, ref_t = r["times"]["ours"], r["times"]["ref"]
  for name, other in info["objectives"].items():
    t, mem, count = r["times"][name], r["memory"][name], r["counts"][name]
    achieved = other["model_flops"] / t["median"]
    lines.append(
        f"{name:<14}{1e3 * t['median']:>9.1f} ms/step ({1e3 * t['q1']:.1f}-{1e3 * t['q3']:.1f}), "
        f"{audio / t['median']:.2f} audio s/s, {achieved / 1e9:.1f} GFLOP/s, "
        f"{mem['peak_rss_mib']:.0f} MiB peak, {count} x {t['n']}; wav2vec 2.0 / {name}: "
        f"{ours_t['median'] / t['median']:.2f}x (median), model FLOPs/step "
        f"{other['model_flops'] / 1e9:.2f} G ({other['model_flops'] / info['model_flops']:.2f}x "
        f"wav2vec 2.0's), compile {other['compile_s']:.1f} s")
  lines += [
      f"ratio ref/ours: {ref_t['median'] / ours_t['median']:.2f}x (median); "
      f"{ref_t['min'] / ours_t['min']:.2f}x (min)",
      f"model FLOPs/step (analytic, xlsr_jax.training.flops): {info['model_flops'] / 1e9:.2f} G "
      f"({info['program_flops'] / 1e9:.2f} G counting the M x M similarity matmul the loss runs)",
      f"XLA cost_analysis of our step: {info['xla_flops'] / 1e9:.2f} G "
      f"({info['xla_flops'] / info['model_flops']:.2f}x analytic) = step with the layer scan's body "
      f"once {info['xla_flops_raw'] / 1e9:.2f} G + {info['layers'] - 1} x one layer "
      f"{info['xla_layer_flops'] / 1e9:.2f} G; XLA adds elementwise work (norms, GELU, softmax, "
      f"AdamW){' and remat recomputation' if info['remat_policy'] != 'none' else ''}, omits the "
      f"waveform's gradient and counts the CPU positional-conv weight-gradient loop once",
      f"float32 matmul peak ({_MATMUL.value}^2): jnp.dot {r['peaks']['ours'] / 1e9:.1f}, "
      f"torch.mm {r['peaks']['ref'] / 1e9:.1f} GFLOP/s (% peak uses {peak / 1e9:.1f})",
      f"loss after timing: ours {r['losses']['ours']:.3f}, ref {r['losses']['ref']:.3f}; "
      f"our compile {info['compile_s']:.1f} s, first step {info['ours_first_step_s']:.1f} s; "
      f"our step's XLA temporaries {info['temp_mib']:.0f} MiB",
      f"{info['load_before']} (before timing), {info['load_after']} (after)"]
  if "profile" in info:
    prof = info["profile"]
    total = sum(prof["components"].values())
    lines.append(f"our step traced: {1e3 * prof['seconds']:.0f} ms wall, {total:.0f} ms in XLA ops:")
    lines += [f"  {ms:9.1f} ms {100 * ms / total:5.1f}%  {name}" for name, ms in prof["components"].items()]
    lines.append("slowest ops:")
    lines += [f"  {ms:9.1f} ms  {name:<28} {op_name}" for name, ms, op_name in prof["top_ops"]]
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  if _WORKER.value == "ours":
    return ours_worker()
  if _WORKER.value == "ref":
    return ref_worker()
  samples = round(_SECONDS.value * SAMPLE_RATE)
  print(f"{os.cpu_count()} CPU cores; {common.machine_load()}", flush=True)
  results = {}
  with tempfile.TemporaryDirectory() as data_dir:
    for preset in _PRESETS.value:
      results[preset] = measure(preset, _BATCH.value, samples, data_dir)
      info = results[preset]["info"]
      if preset == _PRESETS.value[0]:
        print(f"ours: jax on {info['devices']} (XLA uses every core); reference: torch "
              f"{info['torch']}, transformers {info['transformers']}, {info['threads']} threads "
              f"(interop {info['interop_threads']}), attention {info['attention']!r}")
      print(report(preset, _BATCH.value, samples, results[preset]), flush=True)
  print("\n" + json.dumps({p: {k: v for k, v in r.items() if k != "info"} for p, r in results.items()}))


if __name__ == "__main__":
  app.run(main)
