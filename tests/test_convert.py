"""fairseq .pt import (safe unpickling, settings, key layout), our model files, and the CLI."""
import os
import re
import sys
import types

import jax
import numpy as np
import pytest
import torch

from tests import parity_utils as pu
from xlsr_jax import convert
from xlsr_jax.checkpoints import fairseq_import, hf_layout, model_files, safe_pickle

# HF -> fairseq key names (the inverse of fairseq_import._RENAMES), to write fixtures in fairseq layout.
_TO_FAIRSEQ = [
    (r"^wav2vec2\.masked_spec_embed$", "mask_emb"),
    (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.conv\.(\w+)$", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)$", None),  # depends on norm
    (r"^wav2vec2\.feature_projection\.layer_norm\.(\w+)$", r"layer_norm.\1"),
    (r"^wav2vec2\.feature_projection\.projection\.(\w+)$", r"post_extract_proj.\1"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.bias$", "encoder.pos_conv.0.bias"),
    (r"^wav2vec2\.encoder\.layer_norm\.(\w+)$", r"encoder.layer_norm.\1"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.(\w+)\.(\w+)$", r"encoder.layers.\1.self_attn.\2.\3"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.layer_norm\.(\w+)$", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(\w+)$", r"encoder.layers.\1.fc1.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(\w+)$", r"encoder.layers.\1.fc2.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.final_layer_norm\.(\w+)$", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"^quantizer\.codevectors$", "quantizer.vars"),
    (r"^quantizer\.weight_proj\.(\w+)$", r"quantizer.weight_proj.\1"),
    (r"^project_q\.(\w+)$", r"project_q.\1"),
    (r"^project_hid\.(\w+)$", r"final_proj.\1"),
]


def to_fairseq(sd, layer_norm_convs: bool):
  out = {}
  for k, v in sd.items():
    for pattern, repl in _TO_FAIRSEQ:
      if re.match(pattern, k):
        if repl is None:
          repl = (r"feature_extractor.conv_layers.\1.2.1.\2" if layer_norm_convs
                  else r"feature_extractor.conv_layers.\1.2.\2")
        out[re.sub(pattern, repl, k)] = torch.from_numpy(v)
        break
    else:
      raise AssertionError(f"no fairseq name for {k}")
  return out


def _fake_omegaconf():
  """Classes pickled under omegaconf's names, holding state the way omegaconf does."""
  dictconfig = types.ModuleType("omegaconf.dictconfig")
  nodes = types.ModuleType("omegaconf.nodes")

  class DictConfig:
    def __init__(self, content):
      self.content = content

    def __getstate__(self):
      return {"_content": self.content, "_metadata": None, "_parent": None}

  class AnyNode:
    def __init__(self, val):
      self.val = val

    def __getstate__(self):
      return {"_val": self.val, "_metadata": None, "_parent": None}

  DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
  AnyNode.__module__, AnyNode.__qualname__ = "omegaconf.nodes", "AnyNode"
  dictconfig.DictConfig, nodes.AnyNode = DictConfig, AnyNode
  return {"omegaconf": types.ModuleType("omegaconf"), "omegaconf.dictconfig": dictconfig,
          "omegaconf.nodes": nodes}, DictConfig, AnyNode


def write_fairseq_checkpoint(path, sd_fairseq, settings):
  modules, DictConfig, AnyNode = _fake_omegaconf()
  saved = {k: sys.modules.get(k) for k in modules}
  sys.modules.update(modules)
  try:
    model_cfg = DictConfig({k: AnyNode(v) for k, v in settings.items()})
    torch.save({"model": sd_fairseq, "cfg": DictConfig({"model": model_cfg}), "optimizer_history": []}, path)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@pytest.mark.parametrize("variant", ["layer", "group"])
def test_fairseq_checkpoint_imports_equal_to_hf_conversion(tmp_path, variant):
  cfg = pu.small_config(variant)
  sd = pu.state_dict_numpy(pu.reference_model(cfg, seed=5))
  conv = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
  settings = {"encoder_attention_heads": 4, "layer_norm_first": variant == "layer",
              "conv_feature_layers": conv, "latent_groups": 2, "dropout_input": 0.1}
  path = tmp_path / "checkpoint.pt"
  write_fairseq_checkpoint(path, to_fairseq(sd, variant == "layer"), settings)
  assert "omegaconf" not in sys.modules  # the loader must not need it

  params, got_cfg = fairseq_import.import_fairseq(str(path))
  assert got_cfg == cfg.replace(feat_proj_dropout=0.1)
  expected = hf_layout.hf_to_ours(sd, cfg)
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_fairseq_settings_missing_heads_is_an_error(tmp_path):
  cfg = pu.small_config("layer")
  sd = pu.state_dict_numpy(pu.reference_model(cfg))
  path = tmp_path / "no_settings.pt"
  torch.save({"model": to_fairseq(sd, True)}, path)
  with pytest.raises(hf_layout.ConversionError, match="encoder_attention_heads"):
    fairseq_import.import_fairseq(str(path))
  params, got = fairseq_import.import_fairseq(str(path), num_attention_heads=4)
  assert got.num_attention_heads == 4 and got.do_stable_layer_norm


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running_code(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  torch.save({"model": {}, "cfg": _Evil(str(marker))}, path)
  with pytest.raises(safe_pickle.UnsafeCheckpointError, match=r"(posix|os)\.system"):
    fairseq_import.import_fairseq(str(path))
  assert not marker.exists()


def test_convert_cli_hf_to_ours_to_hf_round_trip(tmp_path):
  cfg = pu.small_config("layer")
  ref = pu.reference_model(cfg, seed=7)
  ref.save_pretrained(tmp_path / "hf")
  assert convert.main(["--from=hf", f"--input={tmp_path / 'hf'}", f"--output={tmp_path / 'ours'}"]) == 0
  params, got_cfg, meta = model_files.load_model(str(tmp_path / "ours"))
  assert got_cfg.replace(layerdrop=0.0) == cfg and meta["converted_from"] == "hf"
  assert convert.main(["--from=ours", f"--input={tmp_path / 'ours'}", f"--output={tmp_path / 'hf2'}"]) == 0
  import transformers
  back = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf2")
  original = pu.state_dict_numpy(ref)
  for k, v in pu.state_dict_numpy(back).items():
    np.testing.assert_array_equal(v, original[k], err_msg=k)
