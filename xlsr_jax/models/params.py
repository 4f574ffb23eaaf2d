"""Parameters of any of our models from one dummy input: `init_params` (values) and
`abstract_params` (shapes only, no memory), the one place a model is initialised.

Works for the pretraining models (`Wav2Vec2ForPreTraining`, `BestRqForPreTraining`, empty masks), the encoder
(`Wav2Vec2Model`) and the downstream models whose `__call__` takes a waveform first (CTC, utterance
classification, ML-SUPERB, speech translation). The values depend on the key only, not on
`num_samples`: a longer dummy crop gives the same parameters.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlsr_jax.models.best_rq import BestRqForPreTraining
from xlsr_jax.models.feature_encoder import frame_lengths
from xlsr_jax.models.wav2vec2 import Wav2Vec2ForPreTraining

INIT_SAMPLES = 16_000  # one second: the dummy waveform's length


def init_params(model: nn.Module, key: jax.Array, num_samples: int = INIT_SAMPLES) -> Any:
  """Fresh parameters of `model`, boxed with their logical axis names (pure: jit / eval_shape it)."""
  waveform = jnp.zeros((1, num_samples), jnp.float32)
  args = ()
  if isinstance(model, (Wav2Vec2ForPreTraining, BestRqForPreTraining)):
    # (padding_mask, mask_time [1, T], indices [1, 1])
    frames = frame_lengths(num_samples, model.config)
    args = (None, jnp.zeros((1, frames), bool), jnp.zeros((1, 1), jnp.int32))
  return model.init({"params": key}, waveform, *args)["params"]


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def unbox(tree: Any) -> Any:
  """Boxed (nn.LogicallyPartitioned) leaves -> their values; no sharding constraint applied. A
  train state is unboxed once, after its shardings were read from the boxes (`training.run`)."""
  return jax.tree.map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


def rebox(boxed_like: Any, values: Any) -> Any:
  """Puts `values` (unboxed, same structure) back into the boxes of `boxed_like`."""
  return jax.tree.map(lambda b, v: b.replace_boxed(v) if _is_box(b) else v, boxed_like, values,
                      is_leaf=_is_box)


def host_sharding() -> jax.sharding.Sharding:
  """One host (CPU) device: where a restore target lives that reads parameters without the mesh
  (export, conversion); the first accelerator when JAX_PLATFORMS leaves the host backend out."""
  try:
    device = jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS excludes the host backend: use the first accelerator
    device = jax.local_devices()[0]
  return jax.sharding.SingleDeviceSharding(device)


def abstract_params(model: nn.Module, num_samples: int = INIT_SAMPLES, *, boxed: bool = True,
                    sharding: jax.sharding.Sharding | None = None) -> Any:
  """ShapeDtypeStructs of `init_params(model, ...)`: boxed with logical names, or plain leaves
  (`boxed=False`), each with `sharding` when given (a restore target on one device)."""
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), num_samples))
  if boxed:
    return shapes
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      nn.unbox(shapes))
