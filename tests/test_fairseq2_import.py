"""fairseq2 wav2vec2 checkpoints (the Omnilingual ASR omniASR-W2V encoders): presets, import, parity."""
import os
import re
import sys
import types

import jax
import numpy as np
import pytest
import torch

from tests import parity_utils as pu
from tests.test_convert import _Evil
from xlsr_jax import convert, summary
from xlsr_jax.checkpoints import fairseq2_import, hf_layout, model_files, safe_pickle
from xlsr_jax.downstream import encoders
from xlsr_jax.models import get_preset

# HF -> fairseq2 names, written from fairseq2's module tree (fairseq2/models/wav2vec2/model.py,
# frontend.py, position_encoder.py, vector_quantizer.py, masker.py and the transformer encoder
# layer), independently of fairseq2_import._RENAMES.
_TO_FAIRSEQ2 = [
    (r"^wav2vec2\.masked_spec_embed$", "masker.temporal_mask_embed"),
    (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.conv\.(\w+)$",
     r"encoder_frontend.feature_extractor.layers.\1.conv.\2"),
    (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)$", None),  # by norm kind
    (r"^wav2vec2\.feature_projection\.layer_norm\.(\w+)$", r"encoder_frontend.post_extract_layer_norm.\1"),
    (r"^wav2vec2\.feature_projection\.projection\.(\w+)$", r"encoder_frontend.model_dim_proj.\1"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$",
     "encoder_frontend.pos_encoder.conv.weight_g"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$",
     "encoder_frontend.pos_encoder.conv.weight_v"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.bias$", "encoder_frontend.pos_encoder.conv.bias"),
    (r"^wav2vec2\.encoder\.layer_norm\.(\w+)$", None),  # encoder (pre-LN) or front end (post-LN)
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.out_proj\.(\w+)$", r"encoder.layers.\1.self_attn.output_proj.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.(\w+)\.(\w+)$", r"encoder.layers.\1.self_attn.\2.\3"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.layer_norm\.(\w+)$", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(\w+)$", r"encoder.layers.\1.ffn.inner_proj.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(\w+)$", r"encoder.layers.\1.ffn.output_proj.\2"),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.final_layer_norm\.(\w+)$", r"encoder.layers.\1.ffn_layer_norm.\2"),
    (r"^quantizer\.codevectors$", "quantizer.entries"),
    (r"^quantizer\.weight_proj\.(\w+)$", r"quantizer.entry_proj.\1"),
    (r"^project_q\.(\w+)$", r"final_target_proj.\1"),
    (r"^project_hid\.(\w+)$", r"final_proj.\1"),
]


def to_fairseq2(sd, pre_ln: bool):
  """A HF Wav2Vec2ForPreTraining state dict -> fairseq2's wav2vec2 layout (torch tensors)."""
  out = {"quantizer.num_updates": torch.tensor(1234, dtype=torch.int64)}
  for k, v in sd.items():
    for pattern, repl in _TO_FAIRSEQ2:
      if re.match(pattern, k):
        if repl is None and "conv_layers" in k:
          repl = (r"encoder_frontend.feature_extractor.layers.\1.layer_norm.\2" if pre_ln
                  else r"encoder_frontend.feature_extractor.layers.\1.group_norm.\2")
        elif repl is None:
          repl = r"encoder.layer_norm.\1" if pre_ln else r"encoder_frontend.layer_norm.\1"
        out[re.sub(pattern, repl, k)] = torch.from_numpy(v)
        break
    else:
      raise AssertionError(f"no fairseq2 name for {k}")
  return out


@pytest.fixture(scope="module", params=["layer", "group"])
def checkpoint(request, tmp_path_factory):
  """(path, HF state dict, config, HF reference) of a random model saved in fairseq2's layout."""
  variant = request.param
  cfg = pu.small_config(variant)
  ref = pu.reference_model(cfg, seed=21)
  sd = pu.state_dict_numpy(ref)
  path = tmp_path_factory.mktemp(f"fs2_{variant}") / "checkpoint.pt"
  torch.save({"model": to_fairseq2(sd, variant == "layer")}, path)
  return str(path), sd, cfg, ref


def test_fairseq2_checkpoint_imports_equal_to_hf_conversion(checkpoint):
  path, sd, cfg, _ = checkpoint
  params, got = fairseq2_import.import_fairseq2(path, num_attention_heads=4)
  assert got == cfg
  jax.tree.map(np.testing.assert_array_equal, params, hf_layout.hf_to_ours(sd, cfg))


def test_bfloat16_fairseq2_checkpoint_imports_as_float32(checkpoint, tmp_path):
  path, sd, cfg, _ = checkpoint
  state = torch.load(path)["model"]
  half = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in state.items()}
  torch.save({"model": half}, tmp_path / "bf16.pt")
  params, _ = fairseq2_import.import_fairseq2(str(tmp_path / "bf16.pt"), num_attention_heads=4)
  rounded = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in sd.items()}
  expected = hf_layout.hf_to_ours(rounded, cfg)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_fairseq2_encoder_features_equal_the_reference_forward(checkpoint):
  """A .pt is read as fairseq2 by its keys and its features are the HF reference's hidden states.
  This size matches no preset, so the downstream loader (which cannot pass heads) names the fix."""
  path, _, cfg, ref = checkpoint
  with pytest.raises(hf_layout.ConversionError, match="num_attention_heads"):
    encoders.load_encoder(path)
  loaded = _load_with_heads(path, 4)
  assert loaded.source == "fairseq2" and loaded.config == cfg
  wave, padding = pu.random_batch(2, 6400, [6400, 4100], seed=4)
  hidden, valid = encoders.hidden_states(loaded.params, loaded.config, wave, padding)
  with torch.no_grad():
    out = ref.wav2vec2(torch.from_numpy(wave), attention_mask=torch.from_numpy(~padding).long(),
                       output_hidden_states=True)
  v = np.asarray(valid)
  assert pu.rel_err(np.asarray(hidden[-1])[v], out.last_hidden_state.numpy()[v]) < 1e-4


def _load_with_heads(path, heads):
  params, config, layout = fairseq2_import.import_pt(path, num_attention_heads=heads)
  return encoders.LoadedEncoder(params["wav2vec2"], config, layout, path)


def _fake_hf_state(cfg):
  """The keys and shapes `config_from_fairseq2` reads, as zero-stride arrays (no memory)."""
  z = lambda *shape: np.broadcast_to(np.float32(0), shape)
  d, f = cfg.hidden_size, cfg.intermediate_size
  state = {"wav2vec2.masked_spec_embed": z(d),
           "wav2vec2.encoder.pos_conv_embed.conv.weight_v": z(d, d // cfg.num_conv_pos_embedding_groups,
                                                              cfg.num_conv_pos_embeddings),
           "quantizer.codevectors": z(1, cfg.num_codevectors, cfg.codevector_dim // cfg.num_codevector_groups),
           "quantizer.weight_proj.weight": z(cfg.num_codevectors, cfg.conv_dim[-1]),
           "project_hid.weight": z(cfg.proj_codevector_dim, d)}
  cin = 1
  for i, (c, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel)):
    state[f"wav2vec2.feature_extractor.conv_layers.{i}.conv.weight"] = z(c, cin, k)
    state[f"wav2vec2.feature_extractor.conv_layers.{i}.conv.bias"] = z(c)
    state[f"wav2vec2.feature_extractor.conv_layers.{i}.layer_norm.weight"] = z(c)
    cin = c
  for i in range(cfg.num_hidden_layers):
    state[f"wav2vec2.encoder.layers.{i}.feed_forward.intermediate_dense.weight"] = z(f, d)
  return state


@pytest.mark.parametrize("name", ["omni_300m", "omni_1b", "omni_3b", "omni_7b"])
def test_omnilingual_sizes_are_recognised_from_the_tensors(name):
  cfg = get_preset(name)
  assert fairseq2_import.config_from_fairseq2(_fake_hf_state(cfg), pre_ln=True) == cfg
  assert fairseq2_import.config_from_fairseq2(_fake_hf_state(cfg), True, 8).num_attention_heads == 8


# Parameter counts of fairseq2's Wav2Vec2Model for each Omnilingual arch, by its module tree
# (factory.py: Wav2Vec2Factory / Wav2Vec2EncoderFactory, with the arch values of
# omnilingual_asr/models/wav2vec2_ssl/config.py). The arithmetic, module by module:
def fairseq2_wav2vec2_parameters(d, layers, ffn, quantized_dim, final_dim, feature_dim=512,
                                 convs=((512, 10),) + ((512, 3),) * 4 + ((512, 2),) * 2,
                                 pos_kernel=128, pos_groups=16, codebooks=2, entries=320):
  conv, cin = 0, 1
  for cout, k in convs:  # Conv1d with bias + LayerNorm(cout) with bias (large_lv60k)
    conv += cout * cin * k + cout + 2 * cout
    cin = cout
  frontend = conv + 2 * feature_dim + (feature_dim * d + d)  # post_extract_layer_norm, model_dim_proj
  frontend += d * (d // pos_groups) * pos_kernel + pos_kernel + d  # weight_v, weight_g [1,1,K], bias
  layer = 4 * (d * d + d) + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d  # attn, LN, FFN, LN
  encoder = layers * layer + 2 * d  # + the final LayerNorm (pre-LN)
  masker = d  # temporal_mask_embed
  quantizer = feature_dim * codebooks * entries + codebooks * entries  # entry_proj
  quantizer += codebooks * entries * (quantized_dim // codebooks)  # entries [1, G*V, dim/G]
  heads = (d * final_dim + final_dim) + (quantized_dim * final_dim + final_dim)  # final_proj, final_target_proj
  return frontend + encoder + masker + quantizer + heads


OMNI_COUNTS = {  # (model dim, layers, FFN, quantized_dim, final_dim) -> total parameters
    "omni_300m": ((1024, 24, 4096, 768, 768), 317_390_592),
    "omni_1b": ((1280, 48, 5120, 1024, 1024), 965_514_752),
    "omni_3b": ((2048, 60, 8192, 1024, 1024), 3_064_124_672),
    "omni_7b": ((2048, 128, 8192, 1024, 1024), 6_488_487_168),
}


@pytest.mark.parametrize("name", sorted(OMNI_COUNTS))
def test_omni_preset_parameter_counts_equal_fairseq2(name):
  sizes, expected = OMNI_COUNTS[name]
  assert fairseq2_wav2vec2_parameters(*sizes) == expected
  assert sum(dict(summary.count_by_component(get_preset(name))).values()) == expected


def test_fairseq2_shape_mismatch_names_the_fairseq2_key_and_both_shapes(tmp_path):
  cfg = pu.small_config("layer")
  fs2 = to_fairseq2(pu.state_dict_numpy(pu.reference_model(cfg, seed=2)), True)
  fs2["encoder.layers.1.ffn.inner_proj.bias"] = torch.zeros(95)
  path = tmp_path / "bad.pt"
  torch.save(fs2, path)  # a bare state dict (no "model" entry) is read too
  with pytest.raises(hf_layout.ConversionError,
                     match=r"encoder\.layers\.1\.ffn\.inner_proj\.bias: checkpoint \(95,\), model \(96,\)"):
    fairseq2_import.import_fairseq2(str(path), num_attention_heads=4)


def test_fairseq2_unknown_keys_and_headless_checkpoints_are_refused(tmp_path):
  cfg = pu.small_config("layer")
  fs2 = to_fairseq2(pu.state_dict_numpy(pu.reference_model(cfg, seed=2)), True)
  torch.save({"model": {**fs2, "encoder.layers.0.extra.weight": torch.zeros(3)}}, tmp_path / "x.pt")
  with pytest.raises(hf_layout.ConversionError, match=r"encoder\.layers\.0\.extra\.weight"):
    fairseq2_import.import_fairseq2(str(tmp_path / "x.pt"), num_attention_heads=4)
  headless = {k: v for k, v in fs2.items() if not k.startswith(("quantizer.", "final_"))}
  torch.save({"model": headless}, tmp_path / "headless.pt")
  with pytest.raises(hf_layout.ConversionError, match="omniASR-CTC"):
    fairseq2_import.import_fairseq2(str(tmp_path / "headless.pt"), num_attention_heads=4)


def test_hostile_fairseq2_pickle_is_refused_and_settings_classes_are_inert(tmp_path):
  marker = tmp_path / "pwned"
  torch.save({"model": {"encoder_frontend.x": torch.zeros(1)}, "extra": _Evil(str(marker))},
             tmp_path / "evil.pt")
  for load in (fairseq2_import.import_fairseq2, encoders.load_encoder):
    with pytest.raises(safe_pickle.UnsafeCheckpointError, match=r"(posix|os)\.system"):
      load(str(tmp_path / "evil.pt"))
  assert not marker.exists()
  # A fairseq2 settings object pickled beside the weights becomes an inert stub.
  module = types.ModuleType("fairseq2.models.wav2vec2.config")

  class Wav2Vec2Config:
    def __init__(self):
      self.final_dim = 24
  Wav2Vec2Config.__module__, Wav2Vec2Config.__qualname__ = module.__name__, "Wav2Vec2Config"
  module.Wav2Vec2Config = Wav2Vec2Config
  names = ("fairseq2", "fairseq2.models", "fairseq2.models.wav2vec2")
  fakes = {**{n: types.ModuleType(n) for n in names}, module.__name__: module}
  assert not any(n in sys.modules for n in fakes)  # fairseq2 is not installed beside our stack
  sys.modules.update(fakes)
  try:
    torch.save({"model": {}, "model_config": Wav2Vec2Config()}, tmp_path / "cfg.pt")
  finally:
    for n in fakes:
      del sys.modules[n]
  loaded = safe_pickle.load_fairseq_checkpoint(str(tmp_path / "cfg.pt"))
  assert isinstance(loaded["model_config"], safe_pickle.InertStub)
  assert safe_pickle.to_plain(loaded["model_config"]) == {"final_dim": 24}


def test_convert_cli_from_fairseq2(checkpoint, tmp_path):
  path, sd, cfg, _ = checkpoint
  out = tmp_path / "ours"
  assert convert.main(["--from=fairseq2", f"--input={path}", f"--output={out}"]) == 1  # no heads
  assert convert.main(["--from=fairseq2", f"--input={path}", f"--output={out}",
                       "--num_attention_heads=4"]) == 0
  params, got, meta = model_files.load_model(str(out))
  assert got == cfg and meta["converted_from"] == "fairseq2"
  jax.tree.map(np.testing.assert_array_equal, params, hf_layout.hf_to_ours(sd, cfg))
  assert os.path.isdir(out)


# Parity with fairseq2 itself: outputs its own Wav2Vec2Model computed on weights from
# tests/fixtures/fairseq2_reference.py (fairseq2 needs its own venv; see that file).
REFERENCE = os.path.join(os.path.dirname(__file__), "fixtures", "fairseq2_reference.npz")


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(REFERENCE))


@pytest.mark.parametrize("variant", ["layer", "group"])
def test_outputs_equal_fairseq2_on_the_same_weights(reference, variant, tmp_path):
  import json
  from tests.fixtures import fairseq2_reference as fr
  from xlsr_jax.models import Wav2Vec2ForPreTraining, Wav2Vec2Model
  spec = [(k, tuple(s)) for k, s in json.loads(str(reference[f"{variant}/spec"]))]
  weights = fr.make_weights(spec)
  np.testing.assert_allclose(sum(float(v.sum()) for v in weights.values()),
                             reference[f"{variant}/weights_sum"], rtol=1e-6)  # same draws as there
  path = tmp_path / "fs2.pt"
  torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}}, path)
  # The "layer" variant has the tiny preset's sizes, so its heads come from the preset.
  params, cfg = fairseq2_import.import_fairseq2(str(path), None if variant == "layer" else 4)
  assert cfg.do_stable_layer_norm == (variant == "layer") and cfg.num_attention_heads == 4
  wave, padding, mask = fr.make_batch()
  frames = reference[f"{variant}/frames"]
  valid = np.arange(mask.shape[1])[None, :] < frames[:, None]

  out = Wav2Vec2Model(cfg).apply({"params": params["wav2vec2"]}, wave, padding)
  np.testing.assert_array_equal(np.asarray(out["frame_valid"]), valid)
  ref = reference[f"{variant}/encoder_out"]
  assert pu.rel_err(np.asarray(out["last_hidden_state"])[valid], ref[valid]) < 1e-4

  indices = np.stack([np.flatnonzero(row) for row in mask]).astype(np.int32)
  got = Wav2Vec2ForPreTraining(cfg).apply({"params": params}, wave, padding, mask, indices)
  for name in ("context", "targets"):
    assert pu.rel_err(np.asarray(got[name]), reference[f"{variant}/{name}"]) < 1e-4, name


def test_preset_fields_equal_the_fairseq2_archs(reference):
  """Sizes and dropouts of the omni_* presets against fairseq2's own arch configs (in the fixture)."""
  import json
  archs = json.loads(str(reference["arch_counts"]))
  for name, a in archs.items():
    cfg = get_preset(name)
    assert a["parameters"] == OMNI_COUNTS[name][1]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.codevector_dim, cfg.proj_codevector_dim) == (
                a["model_dim"], a["layers"], a["heads"], a["ffn"], a["quantized_dim"], a["final_dim"])
    assert cfg.do_stable_layer_norm and a["norm_order"].endswith("PRE") and not a["layer_norm_features"]
    assert cfg.conv_bias == a["conv_bias"] and (cfg.feat_extract_norm == "layer") == a["conv_layer_norm"]
    assert (cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups) == (a["pos_kernel"], a["pos_groups"])
    assert (cfg.hidden_dropout, cfg.attention_dropout, cfg.activation_dropout, cfg.layerdrop) == (
        a["dropout"], a["attn_dropout"], a["ffn_inner_dropout"], a["layer_drop"])
    assert cfg.feat_proj_dropout == cfg.feat_quantizer_dropout == a["first_pass_dropout"]
    assert cfg.feature_grad_mult == a["feature_grad_scale"]


def _write_tiny_fairseq2(reference, path):
  """fairseq2's own state dict layout (keys from its model) at the tiny preset's sizes -> path."""
  import json
  from tests.fixtures import fairseq2_reference as fr
  spec = [(k, tuple(s)) for k, s in json.loads(str(reference["layer/spec"]))]
  torch.save({"model": {k: torch.from_numpy(v) for k, v in fr.make_weights(spec).items()}}, path)
  return path


def test_continued_pretraining_init_from_reads_a_fairseq2_checkpoint(reference, tmp_path):
  """train.init_from of a fairseq2 .pt: every pretraining parameter (quantizer and projections
  included) comes from the checkpoint, checked against the model before any device memory."""
  from xlsr_jax.models.params import unbox
  from xlsr_jax.training import init_from
  path = str(_write_tiny_fairseq2(reference, tmp_path / "omni_tiny.pt"))
  cfg = get_preset("tiny")
  values, counts = init_from.load_checked(path, unbox(summary.abstract_params(cfg)), cfg, [])
  assert counts["source"] == "fairseq2" and counts["reinit_arrays"] == 0
  expected, _ = fairseq2_import.import_fairseq2(path)
  jax.tree.map(np.testing.assert_array_equal, values, expected)


@pytest.mark.slow  # ~45 s here (one ASR fine-tuning run end to end)
def test_asr_fine_tuning_starts_from_a_fairseq2_checkpoint(reference, synthetic_tiny_dir, tmp_path,
                                                            capsys):
  """`--config.init=` a fairseq2 .pt: the downstream path reads it as is (tiny preset sizes)."""
  from xlsr_jax import evaluate
  path = _write_tiny_fairseq2(reference, tmp_path / "omni_tiny.pt")
  workdir = tmp_path / "asr"
  args = ["--config=experiments/downstream/asr.py", f"--config.init={path}", f"--workdir={workdir}",
          f"--config.data.data_dir={synthetic_tiny_dir}", "--config.data.corpus=synthetic_speech/tiny",
          "--config.finetune.num_steps=2", "--config.finetune.freeze_transformer_steps=1",
          "--config.train.log_every=1", "--config.train.checkpoint_every=2",
          "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
          "--config.data.max_sample_size=48000"]
  assert evaluate.main(args) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  assert "step 2/2" in out
  exported, cfg, _ = model_files.load_model(str(workdir / "model"))
  tiny = get_preset("tiny")  # the recipe changes only training fields (layerdrop, feature_grad_mult)
  assert cfg.replace(layerdrop=tiny.layerdrop, feature_grad_mult=tiny.feature_grad_mult) == tiny
  start, _ = fairseq2_import.import_fairseq2(str(path))
  # The feature encoder is frozen in the recipe: it is still the checkpoint's, bit for bit.
  jax.tree.map(np.testing.assert_array_equal, exported["wav2vec2"]["feature_extractor"],
               start["wav2vec2"]["feature_extractor"])


def test_ctc_logits_equal_fairseq2_wav2vec2_asr(reference, tmp_path):
  """A fine-tuned wav2vec2_asr checkpoint (omniASR-CTC-* layout: CTC head `final_proj`, no masker)
  imports as encoder + CTC head, whose logits are fairseq2's."""
  import json
  import jax.numpy as jnp
  from tests.fixtures import fairseq2_reference as fr
  from xlsr_jax.downstream.heads import Wav2Vec2ForCTC
  spec = [(k, tuple(s)) for k, s in json.loads(str(reference["asr/spec"]))]
  assert not any(k.startswith(("masker.", "quantizer.")) for k, _ in spec)
  weights = fr.make_weights(spec, seed=fr.SEED + 2)
  np.testing.assert_allclose(sum(float(v.sum()) for v in weights.values()),
                             reference["asr/weights_sum"], rtol=1e-6)
  path = tmp_path / "ctc.pt"
  torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}}, path)
  params, cfg = fairseq2_import.import_fairseq2(str(path))  # tiny preset's encoder sizes: no heads
  assert cfg == get_preset("tiny") and sorted(params) == ["lm_head", "wav2vec2"]
  np.testing.assert_array_equal(params["wav2vec2"]["masked_spec_embed"], 0.0)
  wave, padding, _ = fr.make_batch()
  out = Wav2Vec2ForCTC(cfg, fr.VOCAB).apply({"params": params}, jnp.asarray(wave), jnp.asarray(padding))
  valid = np.arange(wave.shape[1] // 320)[None, :19] < reference["asr/frames"][:, None]
  np.testing.assert_array_equal(np.asarray(out["frame_valid"]), valid)
  assert pu.rel_err(np.asarray(out["logits"])[valid], reference["asr/logits"][valid]) < 1e-4
  # Downstream init takes its encoder; as for a fairseq fine-tuned .pt, the CTC head (whose
  # vocabulary is a sentencepiece model not converted here) is left for a fresh one.
  loaded = encoders.load_encoder(str(path))
  assert loaded.source == "fairseq2" and loaded.ctc_head is None and loaded.config == cfg
  jax.tree.map(np.testing.assert_array_equal, loaded.params, params["wav2vec2"])
