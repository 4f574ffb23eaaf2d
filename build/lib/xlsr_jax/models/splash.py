"""Pallas splash attention (TPU) for the bidirectional, key-padded self-attention of wav2vec 2.0.

Splash attention is JAX's block-sparse flash-attention kernel for TPU: it never materialises the
[batch, heads, frames, frames] score matrix in HBM, which is what the `xla` path spends memory on
at 20 s crops (999 frames). wav2vec 2.0 needs a full (non-causal) mask plus key padding; padding is
expressed with segment ids (valid frames 1, padded frames 0), so padded queries attend only to
padded keys (their outputs are never used) and no softmax row is empty.

Frames are padded up to a multiple of the block size (the kernel tiles in 128-multiples). Under a
mesh (the trainer's `jax.set_mesh`) the kernel runs per shard in `jax.shard_map`: batch over the
rule table's batch axes (`sharding.mesh.batch_axes`), heads over `activation_heads`, frames whole. On platforms other
than TPU the same Pallas kernel runs in interpret mode (slow; for tests and parity checks).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from xlsr_jax.sharding import mesh as mesh_lib

LANE = 128  # the kernel's block sizes are multiples of this


def block_size_for(frames: int, max_block: int) -> tuple[int, int]:
  """(padded frames, block) for a sequence: blocks of up to `max_block`, a multiple of 128."""
  if max_block % LANE or max_block <= 0:
    raise ValueError(f"splash block size {max_block} must be a positive multiple of {LANE}")
  block = min(max_block, LANE * math.ceil(frames / LANE))
  return block * math.ceil(frames / block), block


def _kernel_call(q: jax.Array, k: jax.Array, v: jax.Array, segment: jax.Array, block: int,
                 interpret: bool) -> jax.Array:
  """q, k, v: [batch, heads, frames, head_dim] (frames a multiple of block); segment [batch, frames]."""
  heads, frames = q.shape[1], q.shape[2]
  mask = splash.MultiHeadMask([splash.FullMask((frames, frames))] * heads)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)
  one = lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s))
  return jax.vmap(one)(q, k, v, segment)


def _dividing(axes, size: int, mesh) -> tuple[str, ...] | str | None:
  """`axes` if their mesh size divides `size` (e.g. not for a batch-1 init trace), else None."""
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array | None,
                     max_block: int = 512) -> jax.Array:
  """Softmax(q k^T / sqrt(d)) v with padded keys masked; q, k, v, out: [batch, frames, heads, head_dim].

  key_valid: [batch, frames] bool (True = real frame) or None (all valid).
  """
  batch, frames, heads, head_dim = q.shape
  padded, block = block_size_for(frames, max_block)
  valid = jnp.ones((batch, frames), bool) if key_valid is None else key_valid
  segment = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, padded - frames)))
  to_kernel = lambda x: jnp.pad(x, ((0, 0), (0, padded - frames), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  q = to_kernel(q * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype))  # the kernel does not scale
  k, v = to_kernel(k), to_kernel(v)

  def per_shard(q, k, v, segment):
    return jax.lax.platform_dependent(
        q, k, v, segment,
        tpu=lambda *a: _kernel_call(*a, block=block, interpret=False),
        default=lambda *a: _kernel_call(*a, block=block, interpret=True))

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = per_shard(q, k, v, segment)
  else:
    batch_axes = _dividing(mesh_lib.batch_axes(), batch, mesh)
    head_axes = _dividing(nn.logical_to_mesh_axes(("activation_heads",))[0], heads, mesh)
    qkv_spec = PartitionSpec(batch_axes, head_axes, None, None)
    out = jax.shard_map(per_shard, mesh=mesh, in_specs=(qkv_spec,) * 3 + (PartitionSpec(batch_axes),),
                        out_specs=qkv_spec, check_vma=False)(q, k, v, segment)
  return out.transpose(0, 2, 1, 3)[:, :frames]
