"""Device mesh with named axes (data, fsdp, tensor) built from config sizes, and logical-axis rules.

Sharding is declared, not coded: parameters and activations carry logical axis names, and the
rule table (`DEFAULT_RULES`, overridable in the config) maps them onto mesh axes. The batch's mesh
axes are the table's `activation_batch` entry, read by `batch_axes` (the device feed, the jitted
steps' batch shardings, the loss's shard_map and splash attention all ask it).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None = replicated). Parameters are FSDP-sharded on their
# embedding axis and tensor-parallel on heads / MLP; activations are batch-sharded over (data, fsdp).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_conv", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("conv_width", None),
    ("pos_conv_out", "tensor"),
    ("activation_pos_conv", "tensor"),  # keep: see PositionalConvEmbedding (grouped-conv SPMD bug)
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("codevector_logits", None),
    ("codebook_groups", None),
    ("codebook_entries", None),
    ("codevector", None),
    ("final_dim", None),
    ("vocab", None),
    ("positions", None),  # learned position table of the text decoder
    ("classes", None),
)


def resolve_axis_sizes(sizes: Sequence[int], num_devices: int, names: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
  """Fill the one -1 entry so the product equals num_devices; errors name the axis sizes."""
  sizes = list(sizes)
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(names, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh axes {dict(zip(names, sizes))} do not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh axes {dict(zip(names, sizes))} use {math.prod(sizes)} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *, dcn_data: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types; `dcn_data` > 1 splits data across slices.

  Multi-slice: the data axis is laid out as dcn_data slices x (ici data) with
  `mesh_utils.create_hybrid_device_mesh` so that only data-parallel traffic crosses the DCN.
  """
  devices = list(devices if devices is not None else jax.devices())
  ici = resolve_axis_sizes((data if data == -1 else data // max(dcn_data, 1), fsdp, tensor),
                           len(devices) // dcn_data)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if dcn_data > 1:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)
  if devices == list(jax.devices()):
    return jax.make_mesh(ici, MESH_AXES, axis_types=axis_types)
  return Mesh(np.asarray(devices).reshape(ici), MESH_AXES, axis_types=axis_types)


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Config rule lists ([name, axis-or-list-or-None]) -> the tuple form Flax expects."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"logical axis rule {rule!r} must be (logical_name, mesh_axes)")
    name, axes = rule
    if isinstance(axes, list):
      axes = tuple(axes)
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"logical axis rule {name!r} names mesh axis {axis!r}; valid: {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def batch_axes(rules: Sequence[tuple[str, Any]] | None = None) -> tuple[str, ...]:
  """Mesh axes that split the batch dimension: the `activation_batch` rule of `rules`.

  rules: a rule table (`rules_from_config`); None = the rules in effect (inside
  `nn.logical_axis_rules(...)`, as the jitted steps trace), else DEFAULT_RULES. () = replicated.
  """
  if rules is None:
    rules = nn.get_logical_axis_rules() or DEFAULT_RULES
  for name, axes in rules:
    if name == "activation_batch":
      return () if axes is None else tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
  return ()


def batch_spec(rules: Sequence[tuple[str, Any]] | None = None) -> PartitionSpec:
  """PartitionSpec of batch arrays [batch, ...]: the batch axes first, the rest replicated."""
  axes = batch_axes(rules)
  return PartitionSpec(axes or None)


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> NamedSharding:
  """Batch arrays [batch, ...] are split over the batch axes of the rule table (`batch_axes`)."""
  return NamedSharding(mesh, batch_spec(rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
