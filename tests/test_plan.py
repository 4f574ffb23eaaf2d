"""The AOT capacity plan: topology names, batch checks, and one real TPU compile of a tiny config."""
import contextlib
import hashlib
import importlib.util
import io
import json

import jax
import pytest

from xlsr_jax import plan
from xlsr_jax.sharding import topologies
from xlsr_jax.training import capacity
from xlsr_jax.training.batch_size import global_batch_rows

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu is not installed "
                                  "(pip install -r requirements-tpu.txt); it holds the TPU compiler")

# The demo config shrunk so the TPU compile stays short: two convolutions (stride 20), two
# (scanned) Transformer layers, 0.4 s crops on a 2 x 2 (data, fsdp) mesh of v5e-4.
TINY = ["--config=experiments/demo.py", "--config.model.num_hidden_layers=2",
        "--config.model.conv_dim=(32,32)", "--config.model.conv_kernel=(10,8)",
        "--config.model.conv_stride=(5,4)", "--config.objective.mask_length=3",
        "--config.data.max_sample_size=6400", "--config.data.min_sample_size=6400",
        "--config.data.bucket_seconds=[]",
        "--config.mesh.data=2", "--config.mesh.fsdp=2"]


@pytest.mark.parametrize("name,chips,shape,config", [
    ("v5p-64", 32, "v5:2x4x4", "megacore"), ("v4-32", 16, "v4:2x2x4", "megacore"),
    ("v5p-128", 64, "v5:4x4x4", "megacore"), ("v5e-8", 8, "v5e:2x4", "default"),
    ("v5litepod-256", 256, "v5e:16x16", "default"), ("v6e-8", 8, "v6e:2x4", "default")])
def test_topology_names_count_cores_for_v4_v5p_and_chips_for_v5e_v6e(name, chips, shape, config):
  t = topologies.parse_topology(name)
  assert (t.chips, t.topology_name, t.chip_config_name) == (chips, shape, config)
  assert t.wrap == ((True,) * 3 if name == "v5p-128" else
                    (True, True, False) if name == "v5litepod-256" else (False,) * 3)


@pytest.mark.parametrize("name,message", [("v5p-63", "v5p-8, v5p-16"), ("v7-8", "generation"),
                                          ("v5e-6", "chips"), ("v5e", "e.g. v5p-64")])
def test_bad_topology_names_say_what_is_valid(name, message):
  with pytest.raises(topologies.PlanError, match=message):
    topologies.parse_topology(name)


def test_batch_per_chip_sets_the_global_batch():
  config, topology, _ = plan.parse_args(TINY + ["--topology=v5e-8", "--batch_per_chip=0.5"])
  assert global_batch_rows(config) == 4
  assert config.data.batch_seconds == pytest.approx(4 * 6400 / 16000)
  with pytest.raises(topologies.PlanError, match="whole number"):
    plan.parse_args(TINY + ["--topology=v5e-8", "--batch_per_chip=0.3"])


def test_missing_libtpu_says_how_to_install(monkeypatch, capsys):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "libtpu" else real(n, *a))
  assert plan.main(TINY + ["--topology=v5e-4"]) == 2
  assert "pip install -r requirements-tpu.txt" in capsys.readouterr().err


@needs_libtpu
def test_batch_not_divisible_by_the_mesh_is_an_error(capsys):
  assert plan.main(TINY + ["--topology=v5e-4", "--config.data.batch_seconds=1.2"]) == 2
  err = capsys.readouterr().err
  assert "global batch of 3 crops" in err and "2 x 2 x 1" in err


def test_scan_correction_adds_the_other_layers_and_micro_steps():
  step = {"flops": 10.0, "optimal_seconds": 1.0}
  layer = {"flops": 2.0, "optimal_seconds": 0.5}
  assert capacity.corrected_cost(step, layer, layers=4, micro_steps=1) == {"flops": 16.0,
                                                                           "optimal_seconds": 2.5}
  assert capacity.corrected_cost(step, layer, layers=1, micro_steps=3)["flops"] == 30.0
  assert capacity.corrected_cost({"flops": 1.0}, layer, 2, 1)["optimal_seconds"] is None
  # A negative optimal_seconds is libtpu's "no estimate" (xlsr_300m on v5e-8): no MFU, not a
  # negative one.
  unknown = capacity.corrected_cost({"flops": 10.0, "optimal_seconds": -70.0}, layer, 24, 40)
  assert unknown == {"flops": 40 * (10.0 + 23 * 2.0), "optimal_seconds": None}


def _program_key(lowered, options=None) -> tuple[str, str]:
  return hashlib.sha256(lowered.as_text().encode()).hexdigest(), json.dumps(options, sort_keys=True)


@pytest.fixture(scope="module")
def whole_step_compiles():
  """This module's libtpu compiles, made once per program: {(program, options): result} of the
  whole steps (what it yields) and the same for the one-layer cost compiles.

  The persistent compilation cache (conftest) cannot serve them (an AOT TPU executable has no TPU
  client to load into), and a whole step takes ~25 s of CPU: the tiny plan's step is the bucketed
  plan's 0.4 s bucket, and both bucket methods compile the largest bucket's step (and each
  bucket's layer). Keyed by the lowered program's text and the compiler options, so only the same
  program gets the same result.
  """
  compiles, layers = {}, {}
  real_compile, real_layer_cost = capacity.compile_lowered, capacity.layer_cost

  def compile_once(lowered, options):
    key = _program_key(lowered, options)
    if key not in compiles:
      compiles[key] = real_compile(lowered, options)
    return compiles[key]

  def layer_cost_once(trainer, micro_batch):
    fn, args = capacity.layer_program(trainer, micro_batch)
    with jax.set_mesh(trainer.mesh):
      key = _program_key(fn.lower(*args))
    if key not in layers:
      layers[key] = real_layer_cost(trainer, micro_batch)
    return layers[key]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(capacity, "compile_lowered", compile_once)
    patch.setattr(capacity, "layer_cost", layer_cost_once)
    yield compiles


@pytest.fixture(scope="module")
def tiny_plan(whole_step_compiles):
  """Real compiles for v5e-4 (memory, costs, one layer), through the command line with --json.

  8 crops (2 per chip): the same step as the bucketed plan's 0.4 s bucket, compiled once for both.
  """
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = plan.main(TINY + ["--topology=v5e-4", "--batch_per_chip=2", "--json"])
  assert code == 0
  return json.loads(out.getvalue())


@pytest.mark.slow
@needs_libtpu
def test_plan_compiles_the_train_step_for_a_tpu_topology(tiny_plan):
  r = tiny_plan
  assert (r["topology"], r["device_kind"], r["chips"]) == ("v5e-4", "TPU v5 lite", 4)
  assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert (r["global_batch"], r["batch_per_shard"], r["num_frames"]) == (8, 2, 318)
  mem = r["memory"]
  assert mem["fits"] and mem["hbm_bytes"] == 16 * 2**30 and r["compile_error"] is None
  # Arguments are this chip's share of the state (params + Adam mu, nu, float32) and batch; the
  # TPU pads each small array to whole (8, 128) tiles, which in this tiny model about doubles it.
  state_bytes = 3 * 4 * r["parameters"]
  batch_bytes = r["global_batch"] * 6400 * 5  # float32 waveform + bool padding mask
  assert state_bytes / 4 < mem["argument_bytes"] < 3 * (state_bytes + batch_bytes)
  assert mem["alias_bytes"] > 0  # the state is donated: outputs reuse its buffers
  assert mem["total_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
                                + mem["temp_bytes"] + mem["code_bytes"])
  # The second compile, for the costs, had the windowed-einsum loops off.
  assert r["cost_compiler_options"] == capacity.COST_OPTIONS and r["cost_memory"]["fits"]
  # XLA counts the scanned layer once; the plan adds the other layer from its own compile.
  raw = r["xla_raw"]
  assert r["xla_flops_per_chip"] == pytest.approx(raw["flops_per_chip"] + raw["layer_flops_per_chip"])
  assert r["xla_flops"] == pytest.approx(r["xla_flops_per_chip"] * 4)
  # Corrected XLA count vs the analytic one: XLA adds elementwise work (0.84 measured here).
  assert 0.7 < r["analytic_flops"]["total"] / r["xla_flops"] <= 1.0
  assert r["optimal_seconds"] > 0 and 0 < r["estimated_mfu"] < 1
  text = plan.format_plan(r)
  for expected in ("v5e-4 (TPU v5 lite, 4 chips", "data=2 fsdp=2 tensor=1", "fits",
                   "windowed einsum off", "optimal_seconds", "est. MFU", "cost compile",
                   "feed_forward"):
    assert expected in text


@pytest.mark.slow
@needs_libtpu
def test_plan_reports_useful_mfu_for_a_length_profile(tiny_plan):
  """Crops of 0.4 s cut every utterance of the mix: useful = all frames. The plan says so."""
  r = tiny_plan
  assert r["length_profile"] == "xlsr_mix"
  assert r["estimated_useful_mfu"] == pytest.approx(r["estimated_mfu"], rel=0.02)
  assert "useful MFU" in plan.format_plan(r)


@pytest.mark.slow
@needs_libtpu
def test_bucketed_plan_compiles_every_bucket_and_weights_them_by_the_profile(whole_step_compiles):
  def run(method):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      code = plan.main(TINY + ["--topology=v5e-4", "--config.data.bucket_seconds=[0.4, 0.8]",
                               "--config.data.max_sample_size=12800",
                               "--config.data.min_sample_size=1600",
                               "--config.data.batch_seconds=3.2", "--length_profile=babel",
                               f"--bucket_method={method}", "--json"])
    assert code == 0
    return json.loads(out.getvalue())
  r = run("full")
  a, b = r["buckets"]
  assert (a["num_samples"], a["global_batch"], b["num_samples"], b["global_batch"]) == (
      6400, 8, 12800, 4)
  assert a["step_probability"] + b["step_probability"] == pytest.approx(1.0)
  assert 0 < a["step_probability"] < 0.1  # babel clips of 0.5-0.8 s, a few percent
  assert r["largest_memory"]["total_bytes"] == max(a["memory"]["total_bytes"],
                                                  b["memory"]["total_bytes"])
  assert r["step_seconds"] == pytest.approx(a["step_probability"] * a["optimal_seconds"]
                                            + b["step_probability"] * b["optimal_seconds"])
  assert 0 < r["estimated_useful_mfu"] <= r["estimated_mfu"] < 1
  # The layers method: the largest bucket's whole step (its memory is the plan's, its estimate
  # the full method's), the other bucket's estimate from its layer compile and the largest
  # bucket's non-layer part scaled by samples per step.
  full_programs = set(whole_step_compiles)
  fast = run("layers")
  # Its one whole step is the largest bucket's, the same program the full method compiled.
  assert set(whole_step_compiles) == full_programs
  fa, fb = fast["buckets"]
  assert "not_compiled" in fa["memory"] and fast["largest_memory"] == b["memory"]
  assert fb["optimal_seconds"] == pytest.approx(b["optimal_seconds"], rel=1e-6)
  assert fa["xla_raw"]["layer_optimal_seconds"] == pytest.approx(
      a["xla_raw"]["layer_optimal_seconds"], rel=1e-6)
  assert fa["optimal_seconds"] == pytest.approx(a["optimal_seconds"], rel=0.25)
  assert fast["step_seconds"] == pytest.approx(r["step_seconds"], rel=0.25)


def test_layers_method_estimate_scales_the_non_layer_part_by_samples():
  reference = dict(global_batch=4, num_samples=100, xla_raw=dict(
      flops_per_chip=50.0, layer_flops_per_chip=10.0, optimal_seconds=5.0,
      layer_optimal_seconds=1.0))
  same = capacity.layers_method_estimate(reference, dict(flops=10.0, optimal_seconds=1.0), 400, 3, 1)
  assert same == dict(flops=40.0 + 30.0, optimal_seconds=4.0 + 3.0)  # = raw + (layers - 1) x layer
  half = capacity.layers_method_estimate(reference, dict(flops=6.0, optimal_seconds=0.5), 200, 3, 2)
  assert half == dict(flops=2 * (20.0 + 18.0), optimal_seconds=2 * (2.0 + 1.5))
  none = capacity.layers_method_estimate(reference, dict(flops=6.0, optimal_seconds=-7.0), 200, 3, 1)
  assert none["optimal_seconds"] is None and none["flops"] == 20.0 + 18.0


def test_lowering_keeps_the_frozen_parameters_empty_optimizer_slots():
  """BEST-RQ's frozen quantizer has no optimizer state (optax.MaskedNode slots in the boxed
  abstract state): the plan's abstract state keeps them and the step lowers (AttributeError
  before), with one input per state leaf plus the batch."""
  from tests.configs import small_config
  from tests.test_checkpoints import SAMPLES
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.state import build_trainer
  config = small_config()
  config.objective.name = "best_rq"
  config.objective.best_rq.codebook_size = 64
  trainer = build_trainer(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), SAMPLES)
  lowered, _ = capacity.lower_step(trainer, 2)
  num_leaves = len(jax.tree.leaves(trainer.abstract_state))
  assert len(jax.tree.leaves(lowered.in_avals)) == num_leaves + 2
