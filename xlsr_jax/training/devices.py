"""Peak dense bf16 FLOP/s and HBM per device, keyed by the `device_kind` JAX reports (for MFU and plans).

One JAX device is one chip on every kind listed here (v4 and v5p run their two TensorCores as one
"megacore" device). Sources:
- TPU: Cloud TPU system-architecture pages, "peak compute per chip (bf16)" and "HBM capacity":
  cloud.google.com/tpu/docs/v4 (275 TFLOP/s, 32 GiB), /v5e (197 TFLOP/s, 16 GB), /v5p (459 TFLOP/s,
  95 GB), /v6e (918 TFLOP/s, 32 GB). The device kinds are what libtpu reports for
  `jax.experimental.topologies.get_topology_desc` devices ("TPU v4", "TPU v5 lite", "TPU v5",
  "TPU v6 lite"; checked with libtpu 0.0.52).
- NVIDIA: dense (no 2:4 sparsity) BF16 Tensor Core peak and memory from the A100 and H100 / H200
  datasheets: A100 312 TFLOP/s (40 / 80 GB); H100 SXM 989, H100 PCIe 756, H100 NVL 835 TFLOP/s
  (80 / 80 / 94 GB); H200 SXM 989 TFLOP/s (141 GB), H200 NVL 835 TFLOP/s. The device kinds are the
  CUDA device names (as nvidia-smi prints them).
HBM is stored in GiB (2^30 bytes) for the TPU "GB" figures, which is how the runtime reports them
(a v5e has 16 GiB); GPU memory is the datasheet figure in GB (10^9 bytes).
"""
from __future__ import annotations

import dataclasses

GiB = 2**30
GB = 10**9


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """Peak dense bf16 FLOP/s and HBM bytes of one JAX device (one chip)."""
  name: str
  peak_flops: float
  hbm_bytes: int


_TPU_V4 = DeviceSpec("TPU v4", 275e12, 32 * GiB)
_TPU_V5E = DeviceSpec("TPU v5e", 197e12, 16 * GiB)
_TPU_V5P = DeviceSpec("TPU v5p", 459e12, 95 * GiB)
_TPU_V6E = DeviceSpec("TPU v6e", 918e12, 32 * GiB)

DEVICE_SPECS: dict[str, DeviceSpec] = {
    "TPU v4": _TPU_V4,
    "TPU v5 lite": _TPU_V5E,
    "TPU v5e": _TPU_V5E,
    "TPU v5": _TPU_V5P,
    "TPU v5p": _TPU_V5P,
    "TPU v6 lite": _TPU_V6E,
    "TPU v6e": _TPU_V6E,
    "NVIDIA A100-SXM4-40GB": DeviceSpec("NVIDIA A100 40GB", 312e12, 40 * GB),
    "NVIDIA A100-PCIE-40GB": DeviceSpec("NVIDIA A100 40GB", 312e12, 40 * GB),
    "NVIDIA A100-SXM4-80GB": DeviceSpec("NVIDIA A100 80GB", 312e12, 80 * GB),
    "NVIDIA A100 80GB PCIe": DeviceSpec("NVIDIA A100 80GB", 312e12, 80 * GB),
    "NVIDIA H100 80GB HBM3": DeviceSpec("NVIDIA H100 SXM", 989e12, 80 * GB),
    "NVIDIA H100 PCIe": DeviceSpec("NVIDIA H100 PCIe", 756e12, 80 * GB),
    "NVIDIA H100 NVL": DeviceSpec("NVIDIA H100 NVL", 835e12, 94 * GB),
    "NVIDIA H200": DeviceSpec("NVIDIA H200 SXM", 989e12, 141 * GB),
    "NVIDIA H200 NVL": DeviceSpec("NVIDIA H200 NVL", 835e12, 141 * GB),
}


def lookup(device_kind: str) -> DeviceSpec:
  """The spec of a `jax.Device.device_kind`; unknown kinds are a KeyError that says what to set."""
  if device_kind not in DEVICE_SPECS:
    raise KeyError(f"unknown device kind {device_kind!r}: no peak FLOP/s or HBM figure for it; "
                   f"known kinds: {sorted(DEVICE_SPECS)}. Set config.train.peak_tflops_per_device "
                   f"(peak dense bf16 TFLOP/s of one device) to compute MFU on it.")
  return DEVICE_SPECS[device_kind]


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float:
  """Peak FLOP/s of one device: `override_tflops` (config.train.peak_tflops_per_device) when > 0,
  else the table's figure for `device_kind`."""
  if override_tflops > 0:
    return override_tflops * 1e12
  return lookup(device_kind).peak_flops


# XLA flags for NVIDIA GPU runs, the ones MaxText sets for its GPU runs that help this model; set
# once (apply_gpu_xla_flags, before JAX starts its GPU backend) by every training CLI on a machine
# with NVIDIA devices (xlsr_jax.cli.default_platforms) and by benchmarks/gpu_check.py. Flags the
# user already put in XLA_FLAGS come after ours and win (XLA reads them in order). Each exists in
# jaxlib 0.10.2 (tests/test_gpu.py starts XLA with them: an unknown flag aborts the process).
GPU_XLA_FLAGS = (
    # Schedule asynchronous work (the FSDP all-gathers and reduce-scatters of a multi-GPU mesh) to
    # overlap compute; with one GPU there is nothing to overlap and it changes nothing.
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    # bf16 GEMMs through cuBLAS(Lt) rather than Triton-generated GEMMs: MaxText and NVIDIA's
    # JAX-Toolbox found cuBLAS as fast or faster for transformer shapes, and it skips the Triton
    # GEMM autotuning, a large part of a GPU compile.
    "--xla_gpu_enable_triton_gemm=false",
    # Multi-GPU FSDP (the presets' mesh): collectives on the highest-priority stream, combined
    # into large transfers, all-gathers / reduce-scatters pipelined across the layer scan (layer
    # i+1's weights arrive while layer i computes). They act on collectives only: none on one GPU.
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    # Not set: --xla_gpu_enable_while_loop_double_buffering (MaxText's FSDP runs). It unrolls
    # every loop with a known trip count, the layer scans included, on one GPU as on many: a longer
    # compile and more live memory, for an overlap that only a multi-GPU mesh has. Worth measuring
    # there: XLA_FLAGS=--xla_gpu_enable_while_loop_double_buffering=true
    # Not set: command buffers (CUDA graphs). MaxText turns them off (--xla_gpu_enable_command_buffer=)
    # for its multi-host runs; XLA's default keeps them on, which suits one GPU here: the step
    # launches many small kernels (7 feature-encoder convolutions, norms, masking, the loss) whose
    # launch overhead a graph removes. To turn them off: XLA_FLAGS=--xla_gpu_enable_command_buffer=
)


def apply_gpu_xla_flags(environ: dict | None = None) -> str:
  """Puts GPU_XLA_FLAGS before any XLA_FLAGS already in `environ` (default os.environ) and returns
  the result. Must run before JAX initialises its backends (XLA reads XLA_FLAGS once)."""
  import os  # pylint: disable=import-outside-toplevel
  environ = os.environ if environ is None else environ
  user = environ.get("XLA_FLAGS", "")
  ours = [f for f in GPU_XLA_FLAGS if f.split("=")[0] not in user]
  environ["XLA_FLAGS"] = " ".join(ours + ([user] if user else []))
  return environ["XLA_FLAGS"]
