"""Model configuration (a frozen dataclass) and the presets: tiny, base, xlsr_300m, xlsr_1b, xlsr_2b,
and the Omnilingual ASR wav2vec 2.0 encoders omni_300m, omni_1b, omni_3b, omni_7b.

Field names follow the Hugging Face `Wav2Vec2Config` where one exists, so conversion is a
straight mapping; the parameter counts of the presets equal the reference's exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_attention_and_ffn_out")
ATTENTION_IMPLS = ("xla", "cudnn", "splash", "manual")


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """Sizes and switches of a wav2vec 2.0 / XLS-R network (encoder, quantizer, loss projections)."""
  # Convolutional feature encoder.
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = True
  feat_extract_norm: str = "layer"  # "layer" (XLS-R) or "group" (wav2vec2 base)
  # Transformer.
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096
  do_stable_layer_norm: bool = True  # pre-LN (XLS-R) when True, post-LN (base) when False
  layer_norm_eps: float = 1e-5
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  # Dropouts (XLS-R released configs: all 0 except feat_proj_dropout = dropout_input).
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  feat_proj_dropout: float = 0.0
  feat_quantizer_dropout: float = 0.0
  layerdrop: float = 0.0
  # Quantizer and loss projections.
  num_codevector_groups: int = 2
  num_codevectors_per_group: int = 320
  codevector_dim: int = 768
  proj_codevector_dim: int = 768  # fairseq final_dim
  # Feature-encoder gradient multiplier (fairseq feature_grad_mult): 0.1 base, 1.0 large.
  feature_grad_mult: float = 1.0
  # Numerics and memory.
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype of parameters
  remat_policy: str = "none"  # one of REMAT_POLICIES, applied per Transformer layer
  # "xla" (jax.nn.dot_product_attention), "cudnn" (its GPU flash kernel), "splash" (Pallas splash
  # attention for TPU; interpret mode elsewhere, see models/splash.py), or "manual" (einsum softmax).
  attention_impl: str = "xla"
  splash_block_size: int = 512  # largest splash-attention tile (frames); a multiple of 128

  def __post_init__(self):
    if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
      raise ValueError(f"conv_dim/conv_kernel/conv_stride lengths differ: {len(self.conv_dim)}, "
                       f"{len(self.conv_kernel)}, {len(self.conv_stride)}")
    if self.feat_extract_norm not in ("layer", "group"):
      raise ValueError(f"feat_extract_norm must be 'layer' or 'group', got {self.feat_extract_norm!r}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                       f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")
    if self.codevector_dim % self.num_codevector_groups:
      raise ValueError(f"codevector_dim {self.codevector_dim} is not divisible by "
                       f"num_codevector_groups {self.num_codevector_groups}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    if self.splash_block_size <= 0 or self.splash_block_size % 128:
      raise ValueError(f"splash_block_size {self.splash_block_size} is not a positive multiple of 128")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def num_codevectors(self) -> int:
    return self.num_codevector_groups * self.num_codevectors_per_group

  @property
  def conv_receptive_field(self) -> int:
    field = 1
    for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
      field = (field - 1) * s + k
    return field

  def replace(self, **changes) -> "Wav2Vec2Config":
    return dataclasses.replace(self, **changes)


_LARGE = dict(conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
              num_attention_heads=16, feature_grad_mult=1.0)

_OMNI_FIRST_PASS = dict(feat_proj_dropout=0.1, feat_quantizer_dropout=0.1)

PRESETS: dict[str, Wav2Vec2Config] = {
    # A few-layer model for tests and the CPU demo; same structure as XLS-R (layer norm, pre-LN).
    "tiny": Wav2Vec2Config(
        conv_dim=(32,) * 7, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        num_codevector_groups=2, num_codevectors_per_group=16, codevector_dim=32,
        proj_codevector_dim=32, conv_bias=True, feat_extract_norm="layer",
        do_stable_layer_norm=True),
    # wav2vec 2.0 base (LibriSpeech 960 h): group norm, no conv bias, post-LN.
    "base": Wav2Vec2Config(
        conv_bias=False, feat_extract_norm="group", hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, do_stable_layer_norm=False,
        codevector_dim=256, proj_codevector_dim=256, feature_grad_mult=0.1,
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
        feat_proj_dropout=0.1, feat_quantizer_dropout=0.1, layerdrop=0.05),
    "xlsr_300m": Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096,
                                codevector_dim=768, proj_codevector_dim=768, **_LARGE),
    "xlsr_1b": Wav2Vec2Config(hidden_size=1280, num_hidden_layers=48, intermediate_size=5120,
                              codevector_dim=1024, proj_codevector_dim=1024,
                              feat_proj_dropout=0.1, **_LARGE),
    "xlsr_2b": Wav2Vec2Config(hidden_size=1920, num_hidden_layers=48, intermediate_size=7680,
                              codevector_dim=1024, proj_codevector_dim=1024,
                              feat_proj_dropout=0.1, **_LARGE),
    # Omnilingual ASR wav2vec 2.0 encoders (omniASR-W2V-*, fairseq2 model family "wav2vec2"), from
    # fairseq2's `large_lv60k` arch (300M) and omnilingual_asr/models/wav2vec2_ssl/config.py (1b, 3b,
    # 7b: each derived from the previous one). The same network as XLS-R (layer-norm feature
    # encoder with conv bias, pre-LN, 16 heads, conv positional embedding 128 x 16 groups);
    # dropouts as those archs set them. fairseq2 never overrides its base `feature_grad_scale` of
    # 0.1 for these archs, so feature_grad_mult is 0.1 here (XLS-R's large recipes use 1.0).
    # fairseq2's first_pass_dropout (0.1 from 1b on) drops both the projected features and the
    # quantizer's input (fairseq has two settings, dropout_input and dropout_features).
    "omni_300m": Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096,
                                codevector_dim=768, proj_codevector_dim=768, attention_dropout=0.1,
                                **(_LARGE | dict(feature_grad_mult=0.1))),
    "omni_1b": Wav2Vec2Config(hidden_size=1280, num_hidden_layers=48, intermediate_size=5120,
                              codevector_dim=1024, proj_codevector_dim=1024, **_OMNI_FIRST_PASS,
                              **(_LARGE | dict(feature_grad_mult=0.1))),
    "omni_3b": Wav2Vec2Config(hidden_size=2048, num_hidden_layers=60, intermediate_size=8192,
                              codevector_dim=1024, proj_codevector_dim=1024, **_OMNI_FIRST_PASS,
                              **(_LARGE | dict(feature_grad_mult=0.1))),
    "omni_7b": Wav2Vec2Config(hidden_size=2048, num_hidden_layers=128, intermediate_size=8192,
                              codevector_dim=1024, proj_codevector_dim=1024, **_OMNI_FIRST_PASS,
                              **(_LARGE | dict(feature_grad_mult=0.1))),
}


def get_preset(name: str, **overrides) -> Wav2Vec2Config:
  """A preset by name, with field overrides; unknown names and fields are errors that list the valid ones."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise KeyError(f"unknown Wav2Vec2Config field(s) {unknown}; valid fields: {sorted(fields)}")
  return PRESETS[name].replace(**overrides)


DTYPE_FIELDS = ("dtype", "param_dtype")


class UnknownFieldError(KeyError):
  """Field names that Wav2Vec2Config does not have (`unknown`, sorted)."""

  def __init__(self, unknown: list[str]):
    super().__init__(unknown)
    self.unknown = unknown


def with_fields(base: Wav2Vec2Config, values: dict[str, Any]) -> Wav2Vec2Config:
  """`base` with `values` written over it, the one place stored values become field types: dtype
  names -> jnp.dtype, lists -> tuples (JSON and ConfigDicts hold them so). Unknown names raise
  UnknownFieldError; a value the dataclass refuses raises its ValueError / TypeError."""
  fields = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise UnknownFieldError(unknown)
  changes = {k: jnp.dtype(v) if k in DTYPE_FIELDS else tuple(v) if isinstance(v, list) else v
             for k, v in values.items()}
  return base.replace(**changes)
