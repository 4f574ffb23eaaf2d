"""Parameters both ways between ours and the Hugging Face wav2vec2 layout (flat PyTorch-style keys).

Our tree is the unboxed Flax params of `Wav2Vec2ForPreTraining` (encoder under "wav2vec2") or of
`Wav2Vec2Model` (the encoder at the root). HF keys are those of `Wav2Vec2ForPreTraining.state_dict()`
("wav2vec2." prefix) or `Wav2Vec2Model.state_dict()` (no prefix). Conversion is exact (transposes
and reshapes only), and any key left unused or missing is an error that lists them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from xlsr_jax.models import Wav2Vec2ForPreTraining, Wav2Vec2Model
from xlsr_jax.models import params as params_lib
from xlsr_jax.models.config import Wav2Vec2Config

Tree = dict[str, Any]

# HF config fields that map one to one onto ours.
_SHARED_FIELDS = (
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "intermediate_size", "do_stable_layer_norm",
    "layer_norm_eps", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "hidden_dropout",
    "attention_dropout", "activation_dropout", "feat_proj_dropout", "feat_quantizer_dropout",
    "layerdrop", "num_codevector_groups", "num_codevectors_per_group", "codevector_dim",
    "proj_codevector_dim")

WEIGHT_NORM_KEYS = {  # (g, v) key suffixes: new torch parametrizations, old weight_norm
    "parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    "legacy": ("weight_g", "weight_v"),
}


class ConversionError(ValueError):
  """Keys that do not match between a checkpoint and the model configuration."""


def config_from_hf(hf: dict[str, Any], **overrides) -> Wav2Vec2Config:
  """Our config from a HF `config.json` dict (unknown HF fields are ignored, ours keep defaults)."""
  if hf.get("feat_extract_activation", "gelu") != "gelu" or hf.get("hidden_act", "gelu") != "gelu":
    raise ConversionError(f"only GELU activations are supported, config has "
                          f"feat_extract_activation={hf.get('feat_extract_activation')!r}, "
                          f"hidden_act={hf.get('hidden_act')!r}")
  if hf.get("model_type", "wav2vec2") != "wav2vec2":
    raise ConversionError(f"config.json has model_type={hf.get('model_type')!r}: expected a wav2vec2 "
                          f"checkpoint (model_type 'wav2vec2'; wav2vec2-conformer, HuBERT, data2vec "
                          f"and others are different networks)")
  if hf.get("add_adapter"):
    raise ConversionError("HF configs with add_adapter=True are not supported")
  values = {k: (tuple(hf[k]) if isinstance(hf[k], list) else hf[k]) for k in _SHARED_FIELDS if k in hf}
  values.update(overrides)
  return Wav2Vec2Config(**values)


def config_to_hf(config: Wav2Vec2Config, **extra) -> dict[str, Any]:
  """A HF `config.json` dict for our config (architecture fields; training defaults left to HF)."""
  out = {k: (list(v) if isinstance(v, tuple) else v)
         for k, v in ((k, getattr(config, k)) for k in _SHARED_FIELDS)}
  out.update(model_type="wav2vec2", architectures=["Wav2Vec2ForPreTraining"],
             feat_extract_activation="gelu", hidden_act="gelu",
             num_feat_extract_layers=len(config.conv_dim))
  out.update(extra)
  return out


@dataclasses.dataclass(frozen=True)
class _Rule:
  """One HF tensor <-> one (or, for per-layer rules, a slice of one) of our tensors."""
  ours: tuple[str, ...]
  hf: str
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _linear(ours, hf):
  return [_Rule(ours + ("kernel",), hf + ".weight", lambda w: w.T, lambda k: k.T),
          _Rule(ours + ("bias",), hf + ".bias", lambda b: b, lambda b: b)]


def _layer_norm(ours, hf):
  return [_Rule(ours + ("scale",), hf + ".weight", lambda w: w, lambda w: w),
          _Rule(ours + ("bias",), hf + ".bias", lambda b: b, lambda b: b)]


def _encoder_rules(cfg: Wav2Vec2Config, weight_norm: str) -> tuple[list[_Rule], list[_Rule]]:
  """(global rules, per-layer rules with '{}' in the HF key) for the encoder, relative to its root."""
  rules: list[_Rule] = [_Rule(("masked_spec_embed",), "masked_spec_embed", lambda x: x, lambda x: x)]
  for i in range(len(cfg.conv_dim)):
    base, hf = ("feature_extractor", f"conv_{i}"), f"feature_extractor.conv_layers.{i}"
    rules.append(_Rule(base + ("kernel",), hf + ".conv.weight",
                       lambda w: w.transpose(2, 1, 0), lambda k: k.transpose(2, 1, 0)))
    if cfg.conv_bias:
      rules.append(_Rule(base + ("bias",), hf + ".conv.bias", lambda b: b, lambda b: b))
    if cfg.feat_extract_norm == "layer":
      rules += _layer_norm(base + ("layer_norm",), hf + ".layer_norm")
    elif i == 0:
      rules += [_Rule(base + ("norm_scale",), hf + ".layer_norm.weight", lambda w: w, lambda w: w),
                _Rule(base + ("norm_bias",), hf + ".layer_norm.bias", lambda b: b, lambda b: b)]
  rules += _layer_norm(("feature_projection", "layer_norm"), "feature_projection.layer_norm")
  rules += _linear(("feature_projection", "projection"), "feature_projection.projection")
  g_key, v_key = WEIGHT_NORM_KEYS[weight_norm]
  pos = "encoder.pos_conv_embed.conv."
  rules += [
      _Rule(("encoder", "pos_conv_embed", "weight_g"), pos + g_key,
            lambda g: g.reshape(-1), lambda g: g.reshape(1, 1, -1)),
      _Rule(("encoder", "pos_conv_embed", "weight_v"), pos + v_key,
            lambda v: v.transpose(2, 1, 0), lambda v: v.transpose(2, 1, 0)),
      _Rule(("encoder", "pos_conv_embed", "bias"), pos + "bias", lambda b: b, lambda b: b),
  ]
  rules += _layer_norm(("encoder", "layer_norm"), "encoder.layer_norm")

  d, h, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  layer: list[_Rule] = []
  lay = ("encoder", "layers")
  for ours_name, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    layer += [
        _Rule(lay + ("attention", f"{ours_name}_kernel"), f"encoder.layers.{{}}.attention.{hf_name}.weight",
              lambda w: w.T.reshape(d, h, hd), lambda k: k.reshape(d, h * hd).T),
        _Rule(lay + ("attention", f"{ours_name}_bias"), f"encoder.layers.{{}}.attention.{hf_name}.bias",
              lambda b: b.reshape(h, hd), lambda b: b.reshape(h * hd)),
    ]
  layer += [
      _Rule(lay + ("attention", "out_kernel"), "encoder.layers.{}.attention.out_proj.weight",
            lambda w: w.T.reshape(h, hd, d), lambda k: k.reshape(h * hd, d).T),
      _Rule(lay + ("attention", "out_bias"), "encoder.layers.{}.attention.out_proj.bias",
            lambda b: b, lambda b: b),
  ]
  layer += _layer_norm(lay + ("layer_norm",), "encoder.layers.{}.layer_norm")
  layer += _layer_norm(lay + ("final_layer_norm",), "encoder.layers.{}.final_layer_norm")
  layer += _linear(lay + ("feed_forward", "intermediate"), "encoder.layers.{}.feed_forward.intermediate_dense")
  layer += _linear(lay + ("feed_forward", "output"), "encoder.layers.{}.feed_forward.output_dense")
  return rules, layer


def _pretraining_head_rules(cfg: Wav2Vec2Config) -> list[_Rule]:
  g, v = cfg.num_codevector_groups, cfg.num_codevectors_per_group
  rules = [_Rule(("quantizer", "codevectors"), "quantizer.codevectors",
                 lambda c: c.reshape(g, v, -1), lambda c: c.reshape(1, g * v, -1))]
  rules += _linear(("quantizer", "weight_proj"), "quantizer.weight_proj")
  rules += _linear(("project_q",), "project_q")
  rules += _linear(("project_hid",), "project_hid")
  return rules


def _all_rules(cfg: Wav2Vec2Config, pretraining: bool, weight_norm: str):
  enc, layer = _encoder_rules(cfg, weight_norm)
  if not pretraining:
    return enc, layer
  prefix = lambda r: _Rule(("wav2vec2",) + r.ours, "wav2vec2." + r.hf, r.to_ours, r.to_hf)
  return [prefix(r) for r in enc] + _pretraining_head_rules(cfg), [prefix(r) for r in layer]


def _set(tree: Tree, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _flatten(tree: Tree, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def detect_weight_norm(state_dict: dict[str, Any]) -> str:
  """Which weight-norm key style a HF/torch state dict uses ("parametrizations" or "legacy")."""
  return "legacy" if any(k.endswith("pos_conv_embed.conv.weight_g") for k in state_dict) else "parametrizations"


def is_pretraining_state_dict(state_dict: dict[str, Any]) -> bool:
  return any(k.startswith("quantizer.") for k in state_dict)


def expected_shapes(config: Wav2Vec2Config, pretraining: bool) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Shape of every parameter of our model for `config` (no arrays allocated: jax.eval_shape)."""
  model = Wav2Vec2ForPreTraining(config) if pretraining else Wav2Vec2Model(config)
  params = params_lib.abstract_params(model, max(16_000, config.conv_receptive_field), boxed=False)
  return {k: tuple(v.shape) for k, v in _flatten(params).items()}


def _hf_shape(rule: _Rule, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(rule.to_hf(np.empty(ours_shape, np.float32)).shape)  # np.empty touches no memory


def hf_to_ours(state_dict: dict[str, Any], config: Wav2Vec2Config, *, pretraining: bool | None = None,
               ignore_extra: tuple[str, ...] = ()) -> Tree:
  """HF flat state dict (numpy or torch tensors) -> our nested params (numpy, float32 as stored).

  `pretraining=None` detects it from the keys (a quantizer present). Keys starting with one of
  `ignore_extra` (e.g. "lm_head.") may be present and are skipped; any other unused key or any
  missing key raises ConversionError listing them, and so does every tensor whose shape is not the
  one the configuration implies (its key, its shape and the expected one).
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  if pretraining is None:
    pretraining = is_pretraining_state_dict(sd)
  if not pretraining and any(k.startswith("wav2vec2.") for k in sd):
    sd = {k[len("wav2vec2."):]: v for k, v in sd.items() if k.startswith("wav2vec2.")} | {
        k: v for k, v in sd.items() if not k.startswith("wav2vec2.")}
  rules, layer_rules = _all_rules(config, pretraining, detect_weight_norm(sd))
  want = expected_shapes(config, pretraining)
  used, missing, wrong, params = set(), [], [], {}

  def convert(rule: _Rule, key: str, ours_shape: tuple[int, ...] | None):
    value = sd[key]
    if ours_shape is not None:
      hf_shape = _hf_shape(rule, ours_shape)
      if tuple(np.shape(value)) != hf_shape:
        wrong.append(f"{key}: checkpoint {tuple(np.shape(value))}, model {hf_shape}")
        return None
    return rule.to_ours(value)

  for r in rules:
    if r.hf not in sd:
      missing.append(r.hf)
      continue
    used.add(r.hf)
    value = convert(r, r.hf, want.get(r.ours))
    if value is not None:
      _set(params, r.ours, value)
  for r in layer_rules:
    per_layer = []
    stacked = want.get(r.ours)
    for i in range(config.num_hidden_layers):
      key = r.hf.format(i)
      if key not in sd:
        missing.append(key)
        continue
      used.add(key)
      value = convert(r, key, None if stacked is None else stacked[1:])
      if value is not None:
        per_layer.append(value)
    if len(per_layer) == config.num_hidden_layers:
      _set(params, r.ours, np.stack(per_layer))
  extra = sorted(k for k in sd if k not in used and not k.startswith(tuple(ignore_extra))
                 and not k.endswith("num_batches_tracked"))
  if missing or extra or wrong:
    raise ConversionError(_key_report(missing, extra, config, wrong))
  return params


def ours_to_hf(params: Tree, config: Wav2Vec2Config, *, weight_norm: str = "parametrizations") -> dict[str, np.ndarray]:
  """Our nested params -> HF flat state dict of numpy arrays (pretraining or encoder-only, detected)."""
  pretraining = "wav2vec2" in params
  rules, layer_rules = _all_rules(config, pretraining, weight_norm)
  flat = {k: _to_numpy(v) for k, v in _flatten(params).items()}
  used, missing, out = set(), [], {}
  for r in rules:
    if r.ours not in flat:
      missing.append("/".join(r.ours))
      continue
    out[r.hf] = np.ascontiguousarray(r.to_hf(flat[r.ours]))
    used.add(r.ours)
  for r in layer_rules:
    if r.ours not in flat:
      missing.append("/".join(r.ours))
      continue
    stacked = flat[r.ours]
    for i in range(config.num_hidden_layers):
      out[r.hf.format(i)] = np.ascontiguousarray(r.to_hf(stacked[i]))
    used.add(r.ours)
  extra = sorted("/".join(k) for k in flat if k not in used)
  if missing or extra:
    raise ConversionError(_key_report(missing, extra, config))
  return out


def _key_report(missing, extra, config, wrong=()) -> str:
  lines = [f"checkpoint does not match the model configuration "
           f"(layers={config.num_hidden_layers}, hidden={config.hidden_size}, "
           f"feat_extract_norm={config.feat_extract_norm}, conv_bias={config.conv_bias}):"]
  if missing:
    lines.append(f"  missing {len(missing)} key(s): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
  if extra:
    lines.append(f"  unexpected {len(extra)} key(s): {extra[:20]}{' ...' if len(extra) > 20 else ''}")
  if wrong:
    lines.append(f"  {len(wrong)} tensor(s) of the wrong shape: {'; '.join(wrong[:20])}"
                 f"{' ...' if len(wrong) > 20 else ''}")
  return "\n".join(lines)


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # torch tensor, without importing torch
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
      x = x.float()
    return x.numpy()
  return np.asarray(x)


# The CTC head of transformers' Wav2Vec2ForCTC ("lm_head": Linear hidden -> vocab_size).

CTC_HEAD_PREFIX = "lm_head."


def ctc_head_to_ours(state_dict: dict[str, Any]) -> Tree | None:
  """{"kernel" [hidden, vocab], "bias" [vocab]} from a Wav2Vec2ForCTC state dict; None if it has no
  lm_head. Other heads (e.g. a sequence classifier's) are not read here."""
  if CTC_HEAD_PREFIX + "weight" not in state_dict:
    return None
  weight = _to_numpy(state_dict[CTC_HEAD_PREFIX + "weight"])
  bias = _to_numpy(state_dict[CTC_HEAD_PREFIX + "bias"])
  return {"kernel": np.ascontiguousarray(weight.T), "bias": bias}


def ctc_head_to_hf(head: Tree) -> dict[str, np.ndarray]:
  """Our lm_head params -> {"lm_head.weight" [vocab, hidden], "lm_head.bias" [vocab]}."""
  return {CTC_HEAD_PREFIX + "weight": np.ascontiguousarray(_to_numpy(head["kernel"]).T),
          CTC_HEAD_PREFIX + "bias": _to_numpy(head["bias"])}


def ctc_to_hf(params: Tree, config: Wav2Vec2Config, *, weight_norm: str = "parametrizations"
              ) -> dict[str, np.ndarray]:
  """{"wav2vec2": encoder, "lm_head": head} -> a Wav2Vec2ForCTC state dict."""
  encoder = ours_to_hf(params["wav2vec2"], config, weight_norm=weight_norm)
  out = {"wav2vec2." + k: v for k, v in encoder.items()}
  out.update(ctc_head_to_hf(params["lm_head"]))
  return out
