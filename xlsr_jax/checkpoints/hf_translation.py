"""Parameters both ways between our `SpeechToText` and transformers' `SpeechEncoderDecoderModel`
(Wav2Vec2Model with add_adapter=True + MBartForCausalLM), and mBART(-50) decoder import.

HF keys: "encoder." + Wav2Vec2Model keys (the adapter under "encoder.adapter."), "enc_to_dec_proj.",
"decoder.model.decoder." + MBartDecoder keys, "decoder.lm_head.weight" (absent or equal to the
token embedding when tied). An mBART checkpoint (MBartForConditionalGeneration, keys "model.decoder.",
"model.shared.weight", "final_logits_bias", "lm_head.weight") gives the decoder alone; its encoder
is not used. Conversion is exact (transposes and reshapes); unknown or missing keys are errors.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from xlsr_jax.checkpoints import hf_layout, model_files
from xlsr_jax.checkpoints.hf_layout import ConversionError, _Rule, _layer_norm, _linear, _to_numpy
from xlsr_jax.models.speech_translation import SpeechTranslationConfig
from xlsr_jax.models.text_decoder import DecoderConfig

Tree = dict[str, Any]

_DECODER_FIELDS = tuple(f for f in DecoderConfig.__dataclass_fields__ if f not in ("dtype", "param_dtype"))
_ADAPTER_FIELDS = ("add_adapter", "num_adapter_layers", "adapter_kernel_size", "adapter_stride")


def is_speech_to_text(path: str) -> bool:
  """Whether directory `path` holds a transformers SpeechEncoderDecoderModel (its config.json has
  model_type "speech-encoder-decoder"): the translation model, not a wav2vec2 encoder."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    return False
  config = model_files.read_json(file)
  return isinstance(config, dict) and config.get("model_type") == "speech-encoder-decoder"


def decoder_config_from_hf(hf: dict[str, Any], **overrides) -> DecoderConfig:
  """DecoderConfig from an MBart `config.json` dict (unknown fields ignored)."""
  if not hf.get("normalize_before", True) or not hf.get("add_final_layer_norm", True):
    raise ConversionError("only pre-LN mBART decoders (normalize_before, add_final_layer_norm) "
                          "are supported")
  values = {k: hf[k] for k in _DECODER_FIELDS if k in hf and hf[k] is not None}
  values.update(overrides)
  return DecoderConfig(**values)


def decoder_config_to_hf(config: DecoderConfig) -> dict[str, Any]:
  out = {k: getattr(config, k) for k in _DECODER_FIELDS}
  out.update(model_type="mbart", architectures=["MBartForCausalLM"], is_decoder=True,
             add_cross_attention=True, hidden_size=config.d_model,
             encoder_layers=config.decoder_layers, encoder_attention_heads=config.decoder_attention_heads,
             encoder_ffn_dim=config.decoder_ffn_dim)
  return out


def config_from_hf(hf: dict[str, Any]) -> SpeechTranslationConfig:
  """From a SpeechEncoderDecoderModel `config.json` dict ({"encoder": ..., "decoder": ...})."""
  if "encoder" not in hf or "decoder" not in hf:
    raise ConversionError("not a SpeechEncoderDecoderModel config: no 'encoder'/'decoder' sections")
  enc_hf = dict(hf["encoder"])
  adapter = {k: enc_hf[k] for k in _ADAPTER_FIELDS if k in enc_hf}
  out_size = enc_hf.get("output_hidden_size") or enc_hf["hidden_size"]
  adapter["output_hidden_size"] = 0 if out_size == enc_hf["hidden_size"] else out_size
  enc_hf["add_adapter"] = False  # the adapter is ours to build, not the encoder's
  decoder_hf = dict(hf["decoder"])
  for key in ("pad_token_id", "decoder_start_token_id"):  # the top-level config decides (HF shift)
    if hf.get(key) is not None:
      decoder_hf[key] = hf[key]
  return SpeechTranslationConfig(hf_layout.config_from_hf(enc_hf), decoder_config_from_hf(decoder_hf),
                                 **adapter)


def config_to_hf(config: SpeechTranslationConfig) -> dict[str, Any]:
  enc = hf_layout.config_to_hf(config.encoder, architectures=["Wav2Vec2Model"],
                               add_adapter=config.add_adapter,
                               num_adapter_layers=config.num_adapter_layers,
                               adapter_kernel_size=config.adapter_kernel_size,
                               adapter_stride=config.adapter_stride,
                               output_hidden_size=config.adapter_width)
  dec = decoder_config_to_hf(config.decoder)
  return {"model_type": "speech-encoder-decoder", "architectures": ["SpeechEncoderDecoderModel"],
          "is_encoder_decoder": True, "encoder": enc, "decoder": dec,
          "pad_token_id": config.decoder.pad_token_id,
          "decoder_start_token_id": config.decoder.decoder_start_token_id,
          "eos_token_id": config.decoder.eos_token_id, "tie_word_embeddings": False}


def _attention(ours, hf, d, h, hd) -> list[_Rule]:
  rules = []
  for ours_name, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    rules += [_Rule(ours + (f"{ours_name}_kernel",), f"{hf}.{hf_name}.weight",
                    lambda w: w.T.reshape(d, h, hd), lambda k: k.reshape(d, h * hd).T),
              _Rule(ours + (f"{ours_name}_bias",), f"{hf}.{hf_name}.bias",
                    lambda b: b.reshape(h, hd), lambda b: b.reshape(h * hd))]
  rules += [_Rule(ours + ("out_kernel",), f"{hf}.out_proj.weight",
                  lambda w: w.T.reshape(h, hd, d), lambda k: k.reshape(h * hd, d).T),
            _Rule(ours + ("out_bias",), f"{hf}.out_proj.bias", lambda b: b, lambda b: b)]
  return rules


def decoder_rules(cfg: DecoderConfig, prefix: str) -> tuple[list[_Rule], list[_Rule]]:
  """(global rules, per-layer rules with '{}') for an MBartDecoder under `prefix` ("...decoder.")."""
  same = lambda x: x
  rules = [_Rule(("embed_tokens",), prefix + "embed_tokens.weight", same, same),
           _Rule(("embed_positions",), prefix + "embed_positions.weight", same, same)]
  rules += _layer_norm(("layernorm_embedding",), prefix + "layernorm_embedding")
  rules += _layer_norm(("layer_norm",), prefix + "layer_norm")
  d, h, hd = cfg.d_model, cfg.decoder_attention_heads, cfg.head_dim
  lay, hf = ("layers",), prefix + "layers.{}"
  layer = _attention(lay + ("self_attn",), hf + ".self_attn", d, h, hd)
  layer += _attention(lay + ("encoder_attn",), hf + ".encoder_attn", d, h, hd)
  for name in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
    layer += _layer_norm(lay + (name,), f"{hf}.{name}")
  layer += _linear(lay + ("fc1",), hf + ".fc1") + _linear(lay + ("fc2",), hf + ".fc2")
  return rules, layer


def _adapter_rules(cfg: SpeechTranslationConfig, prefix: str) -> list[_Rule]:
  rules = []
  if cfg.adapter_width != cfg.encoder.hidden_size:
    rules += _linear(("proj",), prefix + "proj")
    rules += _layer_norm(("proj_layer_norm",), prefix + "proj_layer_norm")
  for i in range(cfg.num_adapter_layers):
    rules += [_Rule((f"conv_{i}_kernel",), f"{prefix}layers.{i}.conv.weight",
                    lambda w: w.transpose(2, 1, 0), lambda k: k.transpose(2, 1, 0)),
              _Rule((f"conv_{i}_bias",), f"{prefix}layers.{i}.conv.bias", lambda b: b, lambda b: b)]
  return rules


def _apply(sd: dict, rules, layer_rules, num_layers: int, used: set, missing: list) -> Tree:
  params: Tree = {}
  for r in rules:
    if r.hf not in sd:
      missing.append(r.hf)
      continue
    hf_layout._set(params, r.ours, r.to_ours(sd[r.hf]))
    used.add(r.hf)
  for r in layer_rules:
    keys = [r.hf.format(i) for i in range(num_layers)]
    absent = [k for k in keys if k not in sd]
    missing += absent
    used.update(k for k in keys if k in sd)
    if not absent:
      hf_layout._set(params, r.ours, np.stack([r.to_ours(sd[k]) for k in keys]))
  return params


def _lm_head(sd: dict, key: str, cfg: DecoderConfig, embed: np.ndarray | None, used: set,
             missing: list) -> np.ndarray | None:
  """The untied output projection [d, vocab], or None when tied (a stored copy must equal the
  embedding)."""
  if cfg.tie_word_embeddings:
    if key in sd:
      if embed is not None and not np.array_equal(sd[key], embed):
        raise ConversionError(f"{key} differs from the token embedding but the config says "
                              f"tie_word_embeddings=True")
      used.add(key)
    return None
  if key not in sd:
    missing.append(key)
    return None
  used.add(key)
  return np.ascontiguousarray(sd[key].T)


def hf_to_ours(state_dict: dict[str, Any], config: SpeechTranslationConfig) -> Tree:
  """SpeechEncoderDecoderModel state dict -> {"wav2vec2", "adapter", ["enc_to_dec_proj"], "decoder"}."""
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  enc = {k[len("encoder."):]: v for k, v in sd.items()
         if k.startswith("encoder.") and not k.startswith("encoder.adapter.")}
  if "masked_spec_embed" not in enc:  # HF omits it when masking is off
    enc["masked_spec_embed"] = np.zeros((config.encoder.hidden_size,), np.float32)
  params = {"wav2vec2": hf_layout.hf_to_ours(enc, config.encoder, pretraining=False)}
  used = {k for k in sd if k.startswith("encoder.") and not k.startswith("encoder.adapter.")}
  missing: list[str] = []
  if config.add_adapter:
    params["adapter"] = _apply(sd, _adapter_rules(config, "encoder.adapter."), [], 0, used, missing)
  if config.needs_projection:
    params["enc_to_dec_proj"] = _apply(sd, _linear((), "enc_to_dec_proj"), [], 0, used, missing)
  params["decoder"] = decoder_to_ours(sd, config.decoder, "decoder.model.decoder.",
                                      "decoder.lm_head.weight", used, missing)
  extra = sorted(k for k in sd if k not in used)
  if missing or extra:
    raise ConversionError(_report(missing, extra))
  return params


def decoder_to_ours(sd: dict, cfg: DecoderConfig, prefix: str, lm_head_key: str, used: set,
                    missing: list) -> Tree:
  """The TextDecoder tree from the keys under `prefix`; records used and missing keys."""
  rules, layer_rules = decoder_rules(cfg, prefix)
  tree = _apply(sd, rules, layer_rules, cfg.decoder_layers, used, missing)
  head = _lm_head(sd, lm_head_key, cfg, tree.get("embed_tokens"), used, missing)
  if head is not None:
    tree["lm_head"] = {"kernel": head}
  return tree


def mbart_decoder_to_ours(state_dict: dict[str, Any], cfg: DecoderConfig) -> Tree:
  """The decoder of an MBartForConditionalGeneration / MBartForCausalLM state dict (mBART-50).

  The encoder side ("model.encoder.") is skipped; "final_logits_bias" must be zero (mBART-50's is:
  MBartForCausalLM, the reference decoder, has none).
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  prefix = "model.decoder."
  if prefix + "embed_tokens.weight" not in sd and "model.shared.weight" in sd:
    sd[prefix + "embed_tokens.weight"] = sd["model.shared.weight"]
  used = {k for k in sd if k.startswith(("model.encoder.", "model.shared."))}
  if "final_logits_bias" in sd:
    if np.any(sd["final_logits_bias"] != 0):
      raise ConversionError("final_logits_bias is not zero: the MBartForCausalLM decoder has no "
                            "output bias")
    used.add("final_logits_bias")
  missing: list[str] = []
  tree = decoder_to_ours(sd, cfg, prefix, "lm_head.weight", used, missing)
  extra = sorted(k for k in sd if k not in used)
  if missing or extra:
    raise ConversionError(_report(missing, extra))
  return tree


def ours_to_hf(params: Tree, config: SpeechTranslationConfig) -> dict[str, np.ndarray]:
  """Our tree -> a SpeechEncoderDecoderModel state dict (numpy; lm_head written even when tied,
  as `state_dict()` has it)."""
  flat = {k: _to_numpy(v) for k, v in hf_layout._flatten(params).items()}
  out = {"encoder." + k: v for k, v in hf_layout.ours_to_hf(params["wav2vec2"], config.encoder).items()}
  used = {k for k in flat if k[0] == "wav2vec2"}
  groups = [(("decoder",), *decoder_rules(config.decoder, "decoder.model.decoder."),
             config.decoder.decoder_layers)]
  if config.add_adapter:
    groups.append((("adapter",), _adapter_rules(config, "encoder.adapter."), [], 0))
  if config.needs_projection:
    groups.append((("enc_to_dec_proj",), _linear((), "enc_to_dec_proj"), [], 0))
  missing = []
  for root, rules, layer_rules, num_layers in groups:
    for r in rules + layer_rules:
      key = root + r.ours
      if key not in flat:
        missing.append("/".join(key))
        continue
      used.add(key)
      if r in layer_rules:
        for i in range(num_layers):
          out[r.hf.format(i)] = np.ascontiguousarray(r.to_hf(flat[key][i]))
      else:
        out[r.hf] = np.ascontiguousarray(r.to_hf(flat[key]))
  if config.decoder.tie_word_embeddings:
    out["decoder.lm_head.weight"] = out["decoder.model.decoder.embed_tokens.weight"]
  else:
    key = ("decoder", "lm_head", "kernel")
    out["decoder.lm_head.weight"] = np.ascontiguousarray(flat[key].T)
    used.add(key)
  extra = sorted("/".join(k) for k in flat if k not in used)
  if missing or extra:
    raise ConversionError(_report(missing, extra))
  return out


def _report(missing, extra) -> str:
  lines = ["checkpoint does not match the speech-translation configuration:"]
  if missing:
    lines.append(f"  missing {len(missing)} key(s): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
  if extra:
    lines.append(f"  unexpected {len(extra)} key(s): {extra[:20]}{' ...' if len(extra) > 20 else ''}")
  return "\n".join(lines)
