"""Import of released fairseq wav2vec 2.0 / XLS-R checkpoints (.pt) into our parameters.

fairseq keys are first renamed to the Hugging Face layout (the same mapping as transformers'
conversion script), then `hf_layout.hf_to_ours` does the tensor work. The model configuration is
read from the checkpoint's settings (`cfg.model` or `args`) when present and checked against the
tensor shapes; fine-tuned checkpoints ("w2v_encoder.w2v_model." prefix) give the encoder only.
"""
from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np

from xlsr_jax.checkpoints import hf_layout, safe_pickle
from xlsr_jax.models.config import Wav2Vec2Config

_RENAMES = [  # (fairseq regex, HF replacement), applied to keys without the fine-tuning prefix
    (r"^mask_emb$", "wav2vec2.masked_spec_embed"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$",
     r"wav2vec2.feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
     r"wav2vec2.feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$",
     r"wav2vec2.feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^layer_norm\.(weight|bias)$", r"wav2vec2.feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"wav2vec2.feature_projection.projection.\1"),
    (r"^encoder\.pos_conv\.0\.(weight_g|weight_v|bias)$", r"wav2vec2.encoder.pos_conv_embed.conv.\1"),
    (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.(original0|original1)$",
     r"wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.\1"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"wav2vec2.encoder.layer_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.attention.\2.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"wav2vec2.encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"wav2vec2.encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.final_layer_norm.\2"),
    (r"^quantizer\.vars$", "quantizer.codevectors"),
    (r"^quantizer\.weight_proj\.(weight|bias)$", r"quantizer.weight_proj.\1"),
    (r"^project_q\.(weight|bias)$", r"project_q.\1"),
    (r"^final_proj\.(weight|bias)$", r"project_hid.\1"),
]
_FINETUNE_PREFIX = "w2v_encoder.w2v_model."
_IGNORED = ("_float_tensor", "encoder.version")


def rename_keys(state_dict: dict[str, Any], renames, is_ignored, prefix: str = ""
                ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Keys renamed by the first matching (regex, replacement) of `renames`, after stripping
  `prefix`: (renamed, leftovers under their original keys that matched no rule and that
  `is_ignored` does not accept). Shared by the fairseq and fairseq2 importers."""
  renamed, leftovers = {}, {}
  for key, value in state_dict.items():
    k = key[len(prefix):] if prefix and key.startswith(prefix) else key
    for pattern, repl in renames:
      if re.match(pattern, k):
        renamed[re.sub(pattern, repl, k)] = value
        break
    else:
      if not is_ignored(k):
        leftovers[key] = value
  return renamed, leftovers


def fairseq_to_hf_keys(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Rename fairseq keys to HF ones: (renamed, leftovers that matched no rule)."""
  return rename_keys(state_dict, _RENAMES, lambda k: k.endswith(_IGNORED), _FINETUNE_PREFIX)


def _parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
  """fairseq's conv_feature_layers string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", evaluated safely."""
  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, (ast.List, ast.Tuple)):
      items = [ev(e) for e in node.elts]
      return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
      return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
      left, right = ev(node.left), ev(node.right)
      return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(f"unsupported expression in conv_feature_layers: {spec!r}")
  return [tuple(t) for t in ev(ast.parse(spec, mode="eval"))]


def model_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
  """The model settings of a fairseq checkpoint as a plain dict ({} when none can be read)."""
  cfg = safe_pickle.to_plain(checkpoint.get("cfg"))
  if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
    model = cfg["model"]
    if isinstance(model.get("w2v_args"), dict):  # fine-tuned: the pretraining settings are nested
      inner = model["w2v_args"].get("model")
      if isinstance(inner, dict):
        return inner
    return model
  args = safe_pickle.to_plain(checkpoint.get("args"))
  return args if isinstance(args, dict) else {}


def config_from_fairseq(settings: dict[str, Any], hf_state: dict[str, Any],
                        num_attention_heads: int | None = None) -> Wav2Vec2Config:
  """Our config from fairseq settings, with sizes checked against (or inferred from) the tensors."""
  sd = hf_state
  hidden = int(np.shape(sd["wav2vec2.masked_spec_embed"])[0])
  layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"wav2vec2\.encoder\.layers\.(\d+)\.", k)))
  ffn = int(np.shape(sd["wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.weight"])[0])
  conv_ids = sorted({int(m.group(1)) for k in sd
                     if (m := re.match(r"wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.conv\.weight", k))})
  conv_shapes = [np.shape(sd[f"wav2vec2.feature_extractor.conv_layers.{i}.conv.weight"]) for i in conv_ids]
  pos_v = next(v for k, v in sd.items() if k.endswith(("pos_conv_embed.conv.weight_v", "weight.original1")))
  heads = num_attention_heads or settings.get("encoder_attention_heads")
  if heads is None:
    raise hf_layout.ConversionError(
        "the checkpoint has no readable settings giving encoder_attention_heads; pass it explicitly "
        "(--num_attention_heads=16 for XLS-R)")
  values = dict(
      conv_dim=tuple(int(s[0]) for s in conv_shapes), conv_kernel=tuple(int(s[2]) for s in conv_shapes),
      conv_bias=any(k.endswith(".conv.bias") for k in sd if "feature_extractor" in k),
      feat_extract_norm="layer" if "wav2vec2.feature_extractor.conv_layers.1.layer_norm.weight" in sd else "group",
      hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=int(heads), intermediate_size=ffn,
      num_conv_pos_embeddings=int(np.shape(pos_v)[2]),
      num_conv_pos_embedding_groups=hidden // int(np.shape(pos_v)[1]),
  )
  strides = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
  if "conv_feature_layers" in settings:
    strides = _parse_conv_layers(str(settings["conv_feature_layers"]))
  values["conv_stride"] = tuple(int(s[2]) for s in strides)
  if "layer_norm_first" in settings:
    values["do_stable_layer_norm"] = bool(settings["layer_norm_first"])
  else:  # pre-LN models have their final LayerNorm applied after the stack; infer from the layout
    values["do_stable_layer_norm"] = values["feat_extract_norm"] == "layer"
  if "quantizer.codevectors" in sd:
    cv = np.shape(sd["quantizer.codevectors"])
    logits = int(np.shape(sd["quantizer.weight_proj.weight"])[0])
    groups = int(settings.get("latent_groups", 2))
    values.update(num_codevector_groups=groups, num_codevectors_per_group=logits // groups,
                  codevector_dim=int(cv[2]) * groups,
                  proj_codevector_dim=int(np.shape(sd["project_hid.weight"])[0]))
  for ours, theirs in (("feat_proj_dropout", "dropout_input"), ("feat_quantizer_dropout", "dropout_features"),
                       ("hidden_dropout", "dropout"), ("attention_dropout", "attention_dropout"),
                       ("activation_dropout", "activation_dropout"), ("layerdrop", "encoder_layerdrop"),
                       ("feature_grad_mult", "feature_grad_mult")):
    if theirs in settings and settings[theirs] is not None:
      values[ours] = float(settings[theirs])
  return Wav2Vec2Config(**values)


def import_fairseq(path: str, num_attention_heads: int | None = None) -> tuple[dict, Wav2Vec2Config]:
  """A fairseq .pt -> (our params, config). Pretraining checkpoints give the full pretraining tree,
  fine-tuned ones the encoder tree (as `Wav2Vec2Model`)."""
  return import_fairseq_checkpoint(safe_pickle.load_fairseq_checkpoint(path), path, num_attention_heads)


def import_fairseq_checkpoint(ckpt: Any, path: str, num_attention_heads: int | None = None
                              ) -> tuple[dict, Wav2Vec2Config]:
  """`import_fairseq` on a checkpoint already loaded (safely) from `path`."""
  if not isinstance(ckpt, dict) or "model" not in ckpt:
    raise hf_layout.ConversionError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
  hf_state, leftovers = fairseq_to_hf_keys(ckpt["model"])
  allowed_leftovers = ("w2v_encoder.proj.",)  # the CTC head of fine-tuned models
  unknown = sorted(k for k in leftovers if not k.startswith(allowed_leftovers))
  if unknown:
    raise hf_layout.ConversionError(f"{path}: unexpected fairseq key(s) {unknown[:20]}")
  settings = model_settings(ckpt)
  kind = settings.get("_name") or settings.get("arch")
  if kind is not None and not str(kind).startswith(("wav2vec2", "wav2vec_ctc")):
    raise hf_layout.ConversionError(f"{path}: a fairseq {kind!r} model; expected wav2vec 2.0 / XLS-R "
                                    f"('wav2vec2', or 'wav2vec_ctc' fine-tuned)")
  config = config_from_fairseq(settings, hf_state, num_attention_heads)
  pretraining = "quantizer.codevectors" in hf_state
  if not pretraining:
    hf_state = {k[len("wav2vec2."):]: v for k, v in hf_state.items()}
  return hf_layout.hf_to_ours(hf_state, config, pretraining=pretraining), config
