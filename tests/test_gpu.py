"""The GPU program path, checked on this CPU machine: the attention kernel choice, the program
lowered for CUDA (cuDNN's fused attention, no CPU kernel), the GPU XLA flags, and the GPU check's
dry run (benchmarks/gpu_check.py)."""
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlsr_jax.models import transformer
from xlsr_jax.models.config import get_preset
from xlsr_jax.models.wav2vec2 import Wav2Vec2Model
from xlsr_jax.training import devices
from tests.benchmark_import import import_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cudnn_9_10(monkeypatch):
  """jax as if its CUDA plugin could read a cuDNN version (9.10). Tracing cuDNN attention asks the
  plugin for libcudnn's version (jax._src.cudnn.fused_attention_stablehlo.check_cudnn_version);
  without the plugin and libcudnn (600 MB, GPU-only) that raises, so on CPU this one answer is
  stubbed and everything else (tracing, autodiff, the CUDA lowering rules) is jax's own."""
  from jax._src.cudnn import fused_attention_stablehlo
  monkeypatch.setattr(fused_attention_stablehlo, "cuda_versions",
                      types.SimpleNamespace(cudnn_get_version=lambda: 91000))


def test_attention_kernel_choice(monkeypatch):
  bf16, f32 = jnp.bfloat16, jnp.float32
  tiny = get_preset("tiny")  # head dim 16
  choose = transformer.attention_kernel
  monkeypatch.setattr(transformer, "cudnn_version", lambda: 91000)
  assert tiny.attention_impl == "auto"
  assert choose(tiny, bf16, dropout=False) == "cudnn_or_xla"
  assert choose(tiny, f32, dropout=False) == "xla"  # cuDNN flash attention takes no float32
  assert choose(tiny, bf16, dropout=True) == "manual"
  odd_heads = tiny.replace(hidden_size=60, num_attention_heads=4, num_conv_pos_embedding_groups=2)
  assert choose(odd_heads, bf16, dropout=False) == "xla"  # head dim 15: not a multiple of 8
  for impl in ("xla", "splash", "manual"):
    assert choose(tiny.replace(attention_impl=impl), bf16, dropout=False) == impl
  assert choose(tiny.replace(attention_impl="cudnn"), bf16, dropout=False) == "cudnn"
  with pytest.raises(ValueError, match="float32"):
    choose(tiny.replace(attention_impl="cudnn"), f32, dropout=False)
  for name in ("base", "xlsr_300m", "xlsr_1b", "xlsr_2b", "omni_3b"):
    assert transformer.cudnn_unsupported(bf16, get_preset(name).head_dim) is None, name
  monkeypatch.setattr(transformer, "cudnn_version", lambda: None)  # jax without a CUDA plugin
  assert choose(tiny, bf16, dropout=False) == "xla"


def test_cudnn_padding_and_key_lengths_equal_the_masked_attention():
  """cudnn_attention's odd-frame padding and key lengths, run through XLA: equal to the masked
  attention on every row (values and gradients), odd and even frame counts."""
  rng = np.random.default_rng(0)
  for frames, padded in ((9, True), (10, False)):
    q, k, v = (jnp.asarray(rng.standard_normal((2, frames, 2, 8)), jnp.float32) for _ in range(3))
    key_valid = (jnp.asarray(np.arange(frames)[None] < np.array([frames, 5])[:, None])
                 if padded else None)
    ours = lambda q, k, v: transformer.cudnn_attention(q, k, v, key_valid, implementation="xla")
    ref = lambda q, k, v: transformer.xla_attention(q, k, v, key_valid)
    value_and_grads = lambda f: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) ** 2), (0, 1, 2)))
    (got, got_grads), (want, want_grads) = value_and_grads(ours)(q, k, v), value_and_grads(ref)(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(got_grads, want_grads):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-6, atol=1e-6)


def _lowered_train_grad(platform: str) -> str:
  """StableHLO of the gradient of the tiny bf16 model (remat as xlsr_300m, padded rows, 9 frames:
  odd) lowered for `platform` on this CPU machine."""
  cfg = get_preset("tiny", dtype=jnp.bfloat16, remat_policy="dots_with_no_batch_dims")
  model = Wav2Vec2Model(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 3200)))["params"])

  def loss(p, wave, padding_mask):
    out = model.apply({"params": p}, wave, padding_mask=padding_mask)["last_hidden_state"]
    return jnp.sum(out.astype(jnp.float32) ** 2)

  args = (params, jax.ShapeDtypeStruct((2, 3200), jnp.float32),
          jax.ShapeDtypeStruct((2, 3200), jnp.bool_))
  return jax.jit(jax.grad(loss)).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_cuda_program_holds_cudnn_fused_attention_and_no_cpu_kernel(cudnn_9_10):
  cuda, cpu = _lowered_train_grad("cuda"), _lowered_train_grad("cpu")
  calls = lambda text: sorted(set(re.findall(r"__cudnn\$fmha\w*", text)))
  assert calls(cuda) == ["__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"]
  assert calls(cpu) == []  # the CPU program keeps XLA's attention
  # The CPU kernel (models.layers.grouped_conv1d_cpu, a loop over kernel positions) is one while
  # loop more than the layer scans (forward, backward): absent from the CUDA program.
  assert cuda.count("stablehlo.while") == 2 and cpu.count("stablehlo.while") == 3


def test_xlsr_300m_train_step_lowers_for_cuda_with_cudnn_attention(cudnn_9_10):
  """The step the GPU check times: xlsr_300m as its experiment configures it (bf16, remat
  dots_with_no_batch_dims), 32 crops of 20 s (999 frames: odd), the whole jitted train step
  (masking, loss, AdamW) lowered for CUDA on this CPU machine."""
  make_config = import_benchmark("gpu_check").make_config
  from xlsr_jax.sharding.mesh import make_mesh
  from xlsr_jax.training.state import build_trainer
  samples = 320_000
  trainer = build_trainer(make_config("xlsr_300m", "bfloat16"),
                          make_mesh(1, 1, 1, devices=jax.devices()[:1]), samples)
  assert trainer.shapes.num_frames == 999 and trainer.model.config.remat_policy != "none"
  batch = {"waveform": jax.ShapeDtypeStruct((32, samples), jnp.float32,
                                            sharding=trainer.batch_sharding["waveform"]),
           "lengths": jax.ShapeDtypeStruct((32,), jnp.int32, sharding=trainer.batch_sharding["lengths"])}
  with jax.set_mesh(trainer.mesh):
    text = trainer.train_step.trace(trainer.abstract_state, batch).lower(
        lowering_platforms=("cuda",)).as_text()
  assert sorted(set(re.findall(r"__cudnn\$fmha\w*", text))) == ["__cudnn$fmhaSoftmax",
                                                                "__cudnn$fmhaSoftmaxBackward"]


def test_cuda_program_without_cudnn_falls_back_to_xla_attention():
  if transformer.cudnn_version() is not None:
    pytest.skip("jax here has a CUDA plugin with cuDNN")
  cuda = _lowered_train_grad("cuda")
  assert "__cudnn" not in cuda and cuda.count("stablehlo.while") == 2


def test_gpu_xla_flags_are_known_to_this_xla():
  """XLA aborts on an unknown flag in XLA_FLAGS; start it with ours (on CPU, where it parses the
  GPU flags all the same) and check the process lives."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  flags = devices.apply_gpu_xla_flags(env)
  assert flags == " ".join(devices.GPU_XLA_FLAGS)
  proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "cpu", proc.stderr[-2000:]
  # A flag the user set wins: ours is left out, theirs kept.
  env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}
  flags = devices.apply_gpu_xla_flags(env).split()
  assert "--xla_gpu_enable_triton_gemm=true" in flags and "--xla_gpu_enable_triton_gemm=false" not in flags


def test_gpu_check_rows_are_sized_to_the_card():
  gpu_check = import_benchmark("gpu_check")
  h100, h200 = devices.lookup("NVIDIA H100 80GB HBM3"), devices.lookup("NVIDIA H200")
  assert gpu_check.rows_for("xlsr_300m", 20.0, h100.hbm_bytes) == 32
  assert gpu_check.rows_for("xlsr_300m", 5.0, h100.hbm_bytes) == 128  # same audio per step
  assert gpu_check.rows_for("xlsr_300m", 20.0, h200.hbm_bytes) == 56  # 141 GB: 1.76x the audio
  assert gpu_check.rows_for("tiny", 1.0, None) == 2
  assert gpu_check.card_name(types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3",
                                                   platform="gpu")) == "nvidia_h100_80gb_hbm3"


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_figure(tmp_path):
  """benchmarks/gpu_check.sh --dry_run on CPU: the tiny preset through every stage the GPU run
  has (bf16 parity against float32, one bucket's compile and steps), into the results file."""
  out = tmp_path / "gpu_check.json"
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry_run", f"--out={out}"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "tiny 1 s x 2 rows: step" in proc.stdout  # printed as it goes
  import json
  r = json.loads(out.read_text())
  assert r["dry_run"] and r["platform"] == "cpu" and r["commit"] and r["jax"] == jax.__version__
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in r["xla_flags"]
  bf16 = r["parity_vs_cpu"]["device_bf16"]
  assert bf16["ok"] and 0 < bf16["hidden_rel_l2_err"] < bf16["hidden_rtol"]  # bf16 is not f32
  (t,) = r["timings"]
  assert (t["preset"], t["bucket_s"], t["rows"], t["dtype"]) == ("tiny", 1.0, 2, "bfloat16")
  assert t["attention_kernel"] == "xla"  # a CPU program never holds the cuDNN call
  assert t["compile_s"] > 0 and t["step_s"]["median"] > 0 and np.isfinite(t["loss"])
  assert t["audio_seconds_per_s"] == pytest.approx(2 * 1.0 / t["step_s"]["median"])
  assert t["mfu"] is None  # no peak FLOP/s for a CPU
  assert r["total_s"] > 0


def test_xla_drops_the_other_platform_branch_saved_values():
  """platform_dependent under autodiff makes each branch also return zero-filled copies of what
  the other branch saves for the backward pass (a CUDA program: XLA attention's [batch, heads,
  frames, frames] probabilities, for every layer of the scan). XLA must drop them: emulated on CPU
  with a flash-like attention (custom VJP, saves only q, k, v, out) as the kept branch and XLA's
  attention as the other, the compiled scan's temporaries equal those of the flash-like one alone."""
  batch, frames, heads, dim, layers = 2, 256, 4, 16, 3

  @jax.custom_vjp
  def flash(q, k, v):
    return transformer.xla_attention(q, k, v, None)

  def flash_fwd(q, k, v):
    out = flash(q, k, v)
    return out, (q, k, v, out)

  def flash_bwd(saved, g):
    q, k, v, _ = saved
    return jax.vjp(lambda *a: transformer.xla_attention(*a, None), q, k, v)[1](g)

  flash.defvjp(flash_fwd, flash_bwd)
  xla = lambda q, k, v: transformer.xla_attention(q, k, v, None)

  def temp_bytes(attend):
    def layer(x, w):
      q, k, v = (jnp.reshape(x @ w * s, (batch, frames, heads, dim)) for s in (1.0, 0.5, 0.25))
      return x + jnp.reshape(attend(q, k, v), x.shape), None

    loss = lambda w, x: jnp.sum(jax.lax.scan(layer, x, w)[0] ** 2)
    args = (jax.ShapeDtypeStruct((layers, heads * dim, heads * dim), jnp.float32),
            jax.ShapeDtypeStruct((batch, frames, heads * dim), jnp.float32))
    return jax.jit(jax.grad(loss)).trace(*args).lower().compile().memory_analysis().temp_size_in_bytes

  switch = lambda q, k, v: jax.lax.platform_dependent(q, k, v, cpu=flash, default=xla)
  probs = layers * batch * heads * frames * frames * 4  # what XLA attention's backward keeps
  assert temp_bytes(xla) > temp_bytes(flash) + probs // 2
  assert temp_bytes(switch) == temp_bytes(flash)
