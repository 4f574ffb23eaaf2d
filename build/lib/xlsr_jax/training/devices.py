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
