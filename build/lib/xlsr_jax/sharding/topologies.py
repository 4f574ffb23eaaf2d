"""TPU slice topologies by Cloud TPU accelerator type, and their compile-only devices.

Topology names are Cloud TPU accelerator types. For v4 and v5p the number counts TensorCores, two
per chip, and each chip is one JAX ("megacore") device: v5p-64 is 32 chips, v4-32 is 16 chips. For
v5e (also spelled v5litepod) and v6e it counts chips, one TensorCore each: v5e-256 is 256 chips.
`topology_devices` gives libtpu's virtual devices of a slice (or several slices), which
`sharding.mesh.make_mesh` arranges into a mesh for an ahead-of-time compile on a CPU machine
(`python -m xlsr_jax.plan`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

INSTALL_HINT = "pip install -r requirements-tpu.txt"


class PlanError(ValueError):
  """A topology, batch or environment the capacity plan cannot use; the message says what to change."""


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

