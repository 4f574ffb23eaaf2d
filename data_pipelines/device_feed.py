"""Host batch -> global jax.Array: each process hands over its rows, the batch axis is sharded.

`global_batch` turns this process's numpy batch `[local_batch, ...]` into global arrays
`[local_batch * process_count, ...]` whose leading axis is split over the batch axes of the
`batch_spec` the caller passes (the step's own, from the logical-axis rule table:
`xlsr_jax.sharding.mesh.batch_spec()`, ("data", "fsdp") by default) and replicated over the others.
This module takes the spec rather than importing xlsr_jax.sharding, so data_pipelines depends on
jax alone. Process p's rows become rows
[p * local_batch, (p + 1) * local_batch) of the global batch when its devices are laid out in
process order, as `jax.make_mesh` does.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _batch_axes(batch_spec: PartitionSpec) -> tuple[str, ...]:
  """Mesh axis names that split the leading (batch) axis in `batch_spec`."""
  if len(batch_spec) == 0 or batch_spec[0] is None:
    return ()
  first = batch_spec[0]
  return tuple(first) if isinstance(first, (tuple, list)) else (first,)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                 batch_spec: PartitionSpec) -> dict[str, jax.Array]:
  """`{name: [local_batch, ...] numpy}` -> `{name: [global_batch, ...] jax.Array}` on `mesh`.

  Every array is sharded with `NamedSharding(mesh, batch_spec)` (trailing axes replicated);
  batch_spec: the step's batch spec (`xlsr_jax.sharding.mesh.batch_spec()` under the config's
  rules). Works with one process (local = global) and with several (each passes its own rows).
  """
  axes = _batch_axes(batch_spec)
  missing = [a for a in axes if a not in mesh.shape]
  if missing:
    raise ValueError(f"batch_spec {batch_spec} names mesh axes {missing} that the mesh "
                     f"{dict(mesh.shape)} does not have")
  shards = math.prod(mesh.shape[a] for a in axes)
  sharding = NamedSharding(mesh, batch_spec)
  out = {}
  for name, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
      raise TypeError(f"batch[{name!r}] has dtype {value.dtype}; only bool and numeric arrays can "
                      "become jax.Arrays (drop string features such as 'id' first)")
    if value.ndim == 0:
      raise ValueError(f"batch[{name!r}] is a scalar; expected a leading batch axis")
    global_rows = value.shape[0] * jax.process_count()
    if global_rows % shards:
      raise ValueError(f"batch[{name!r}]: global batch {global_rows} ({value.shape[0]} rows x "
                       f"{jax.process_count()} processes) is not divisible by the {shards} "
                       f"shards of mesh axes {axes} {dict(mesh.shape)}")
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def process_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a batch that every process built whole (the downstream pipelines read
  the whole split on each host): rows [p * n / P, (p + 1) * n / P) of process p of P, the rows
  `global_batch` puts back in their place."""
  index, count = jax.process_index(), jax.process_count()
  out = {}
  for name, value in batch.items():
    if value.shape[0] % count:
      raise ValueError(f"batch[{name!r}] has {value.shape[0]} rows, which do not divide over "
                       f"{count} processes")
    rows = value.shape[0] // count
    out[name] = value[index * rows:(index + 1) * rows]
  return out
