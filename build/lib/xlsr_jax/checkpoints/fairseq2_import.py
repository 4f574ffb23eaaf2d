"""Import of fairseq2 wav2vec 2.0 checkpoints (the Omnilingual ASR omniASR-W2V-* encoders) into ours.

Pretrained checkpoints (fairseq2's wav2vec2 family) give the full pretraining tree, quantizer and
projections included; fine-tuned ones (wav2vec2_asr, e.g. omniASR-CTC-*) give
{"wav2vec2": encoder, "lm_head": CTC head} (their vocabulary, a sentencepiece model, is not read).

fairseq2 names its modules differently from fairseq (`fairseq2/models/wav2vec2/{model,frontend,
factory}.py`, and the fairseq -> fairseq2 map in `fairseq2/models/wav2vec2/interop.py`): its keys are
renamed to the Hugging Face layout here, then `hf_layout.hf_to_ours` does the tensor work and the
shape checks (every mismatch names the key with both shapes). The .pt is read with the same safe
unpickler as fairseq checkpoints. A fairseq2 checkpoint stores no architecture settings we can read,
so the sizes come from the tensors and the number of attention heads from the preset of the same
sizes (omni_300m/1b/3b/7b: all use 16), or from the caller; the conv strides, which no tensor
shows, are the standard (5, 2, 2, 2, 2, 2, 2) of every released wav2vec 2.0 model.

`import_pt` reads any .pt once and dispatches on its key layout: fairseq (`mask_emb`,
`feature_extractor.conv_layers.*`) or fairseq2 (`encoder_frontend.*`).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from xlsr_jax.checkpoints import fairseq_import, hf_layout, safe_pickle
from xlsr_jax.models.config import PRESETS, Wav2Vec2Config

_RENAMES = [  # (fairseq2 regex, HF replacement)
    (r"^masker\.temporal_mask_embed$", "wav2vec2.masked_spec_embed"),
    (r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.conv\.(weight|bias)$",
     r"wav2vec2.feature_extractor.conv_layers.\1.conv.\2"),
    (r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.(layer_norm|group_norm)\.(weight|bias)$",
     r"wav2vec2.feature_extractor.conv_layers.\1.layer_norm.\3"),
    (r"^encoder_frontend\.post_extract_layer_norm\.(weight|bias)$",
     r"wav2vec2.feature_projection.layer_norm.\1"),
    (r"^encoder_frontend\.model_dim_proj\.(weight|bias)$", r"wav2vec2.feature_projection.projection.\1"),
    (r"^encoder_frontend\.pos_encoder\.conv\.(weight_g|weight_v|bias)$",
     r"wav2vec2.encoder.pos_conv_embed.conv.\1"),
    (r"^encoder_frontend\.pos_encoder\.conv\.parametrizations\.weight\.(original0|original1)$",
     r"wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.\1"),
    # Post-LN models (wav2vec2 base) normalise after the positional add, in the front end;
    # pre-LN models (XLS-R, Omnilingual) after the last layer, in the encoder. HF keeps both as
    # encoder.layer_norm (a model has one or the other).
    (r"^encoder_frontend\.layer_norm\.(weight|bias)$", r"wav2vec2.encoder.layer_norm.\1"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"wav2vec2.encoder.layer_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.attention.\2.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.output_proj\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.attention.out_proj.\2"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.ffn\.inner_proj\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.ffn\.output_proj\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.ffn_layer_norm\.(weight|bias)$",
     r"wav2vec2.encoder.layers.\1.final_layer_norm.\2"),
    (r"^quantizer\.entries$", "quantizer.codevectors"),
    (r"^quantizer\.entry_proj\.(weight|bias)$", r"quantizer.weight_proj.\1"),
    (r"^final_target_proj\.(weight|bias)$", r"project_q.\1"),
    (r"^final_proj\.(weight|bias)$", r"project_hid.\1"),
]
# Present in the checkpoint, deliberately not imported: the Gumbel quantizer's update counter (a
# buffer; our temperature follows the training step of the run that loads the weights).
IGNORED = ("quantizer.num_updates",)
_FRONTEND = "encoder_frontend."


def is_fairseq2_state_dict(state_dict: dict[str, Any]) -> bool:
  """True for fairseq2's wav2vec2 key layout (a front end named `encoder_frontend`)."""
  return any(str(k).startswith(_FRONTEND) for k in state_dict)


def model_state_dict(checkpoint: Any) -> dict[str, Any]:
  """The state dict of a fairseq2 .pt: the "model" entry when there is one, else the dict itself;
  a "module." prefix (a DDP-wrapped model) is removed, as fairseq2's own loader does."""
  state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state, dict):
    raise hf_layout.ConversionError(f"not a state dict: {type(state).__name__}")
  if all(str(k).startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def fairseq2_to_hf_keys(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Rename fairseq2 keys to HF ones: (renamed, leftovers that matched no rule and are not IGNORED)."""
  return fairseq_import.rename_keys(state_dict, _RENAMES, lambda k: k in IGNORED)


_ENCODER_FIELDS = ("conv_dim", "conv_kernel", "conv_bias", "feat_extract_norm", "hidden_size",
                   "num_hidden_layers", "intermediate_size", "num_conv_pos_embeddings",
                   "num_conv_pos_embedding_groups")
_HEAD_FIELDS = ("num_codevector_groups", "num_codevectors_per_group", "codevector_dim",
                "proj_codevector_dim")


def _sizes(hf_state: dict[str, Any], pre_ln: bool, pretraining: bool) -> dict[str, Any]:
  """The architecture fields the tensors determine (all but the heads and the conv strides; the
  quantizer's only for a pretraining checkpoint)."""
  inferred = fairseq_import.config_from_fairseq({}, hf_state, num_attention_heads=1)
  keys = _ENCODER_FIELDS + (_HEAD_FIELDS if pretraining else ())
  return {**{k: getattr(inferred, k) for k in keys}, "do_stable_layer_norm": pre_ln}


def config_from_fairseq2(hf_state: dict[str, Any], pre_ln: bool,
                         num_attention_heads: int | None = None) -> Wav2Vec2Config:
  """Our config for a fairseq2 checkpoint: sizes from the tensors; the heads, dropouts and
  feature_grad_mult of the preset with those sizes (the omni_* ones first, so a 300M is
  omni_300m, not xlsr_300m), the heads replaced by `num_attention_heads` when given. A checkpoint
  of no preset's sizes needs `num_attention_heads` (fairseq2 does not store it). Encoder-only
  (fine-tuned) checkpoints match on the encoder's sizes."""
  sizes = _sizes(hf_state, pre_ln, pretraining="quantizer.codevectors" in hf_state)
  for name in sorted(PRESETS, key=lambda n: not n.startswith("omni_")):
    preset = PRESETS[name]
    if all(getattr(preset, k) == v for k, v in sizes.items()):
      return preset if num_attention_heads is None else preset.replace(
          num_attention_heads=int(num_attention_heads))
  if num_attention_heads is None:
    raise hf_layout.ConversionError(
        f"a fairseq2 wav2vec2 checkpoint of no preset's sizes (hidden {sizes['hidden_size']}, "
        f"{sizes['num_hidden_layers']} layers, FFN {sizes['intermediate_size']}): fairseq2 stores no "
        f"head count, pass it (--num_attention_heads=N)")
  return Wav2Vec2Config(num_attention_heads=int(num_attention_heads), **sizes)


def _ctc_layout(hf_state: dict[str, Any], path: str) -> tuple[dict[str, Any], dict]:
  """A fine-tuned (wav2vec2_asr, e.g. omniASR-CTC-*) checkpoint renamed as if pretraining: (its
  encoder keys, the CTC head {"kernel" [dim, vocab], "bias" [vocab]}). Its `final_proj` is the CTC
  head; without a masker (use_masking off, as in the Omnilingual CTC models) the mask embedding is
  zeros, as a HF checkpoint saved with masking off gets (it is used only if fine-tuning masks)."""
  if "project_q.weight" in hf_state or "project_hid.weight" not in hf_state:
    raise hf_layout.ConversionError(
        f"{path}: a fairseq2 checkpoint without the quantizer (quantizer.entries) and without a "
        f"CTC head (final_proj alone): neither a pretrained wav2vec2 (omniASR-W2V-*) nor a "
        f"fine-tuned wav2vec2_asr (omniASR-CTC-*) model")
  state = dict(hf_state)
  weight, bias = (hf_layout._to_numpy(state.pop(f"project_hid.{k}")) for k in ("weight", "bias"))
  head = {"kernel": np.ascontiguousarray(weight.T), "bias": bias}
  if "wav2vec2.masked_spec_embed" not in state:
    dim = np.shape(state["wav2vec2.feature_projection.projection.weight"])[0]
    state["wav2vec2.masked_spec_embed"] = np.zeros((dim,), np.float32)
  return state, head


def import_fairseq2_state_dict(state_dict: dict[str, Any], path: str,
                               num_attention_heads: int | None = None) -> tuple[dict, Wav2Vec2Config]:
  """A fairseq2 wav2vec2 state dict -> (our params, config): the Wav2Vec2ForPreTraining tree for a
  pretrained checkpoint, {"wav2vec2": encoder, "lm_head": CTC head} for a wav2vec2_asr one."""
  hf_state, leftovers = fairseq2_to_hf_keys(state_dict)
  if leftovers:
    raise hf_layout.ConversionError(
        f"{path}: fairseq2 key(s) that are not part of a wav2vec 2.0 model {sorted(leftovers)[:20]} "
        f"(a stacked positional encoder, a Conformer or an LLM-ASR model? the wav2vec2 and "
        f"wav2vec2_asr families, e.g. omniASR-W2V-* and omniASR-CTC-*, are read)")
  pretraining, head = "quantizer.codevectors" in hf_state, None
  if not pretraining:
    hf_state, head = _ctc_layout(hf_state, path)
  # fairseq2 puts a pre-LN model's last LayerNorm in the encoder, a post-LN one's in the front end.
  config = config_from_fairseq2(hf_state, "encoder.layer_norm.weight" in state_dict, num_attention_heads)
  try:
    params = hf_layout.hf_to_ours(hf_state, config, pretraining=pretraining)
  except hf_layout.ConversionError as e:  # name the checkpoint's own keys, not the HF ones
    hf_names = {hf: key for key in state_dict for hf in fairseq2_to_hf_keys({key: None})[0]}
    hf_names.update({hf[len("wav2vec2."):]: key for hf, key in hf_names.items()})
    message = re.sub(r"[\w.]+", lambda m: hf_names.get(m.group(0), m.group(0)), str(e))
    raise hf_layout.ConversionError(f"{path}: {message}") from None
  return (params, config) if pretraining else ({"wav2vec2": params, "lm_head": head}, config)


def import_fairseq2(path: str, num_attention_heads: int | None = None) -> tuple[dict, Wav2Vec2Config]:
  """A fairseq2 wav2vec2 .pt (omniASR-W2V-*, or a fine-tuned omniASR-CTC-*) -> (our params, config)."""
  state = model_state_dict(safe_pickle.load_fairseq_checkpoint(path))
  if not is_fairseq2_state_dict(state):
    raise hf_layout.ConversionError(f"{path}: not a fairseq2 wav2vec2 checkpoint (no "
                                    f"'{_FRONTEND}*' keys)")
  return import_fairseq2_state_dict(state, path, num_attention_heads)


def import_pt(path: str, num_attention_heads: int | None = None) -> tuple[dict, Wav2Vec2Config, str]:
  """Any wav2vec2 .pt we read -> (params, config, "fairseq" | "fairseq2"), loading the file once."""
  checkpoint = safe_pickle.load_fairseq_checkpoint(path)
  try:
    state = model_state_dict(checkpoint)
  except hf_layout.ConversionError:
    state = {}
  if is_fairseq2_state_dict(state):
    return (*import_fairseq2_state_dict(state, path, num_attention_heads), "fairseq2")
  return (*fairseq_import.import_fairseq_checkpoint(checkpoint, path, num_attention_heads), "fairseq")
