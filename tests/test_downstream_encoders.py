"""Loading encoders from the three checkpoint formats, hidden states, and CTC parity with HF."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tests import parity_utils as pu
from tests.test_convert import to_fairseq, write_fairseq_checkpoint
from xlsr_jax.checkpoints import hf_layout, model_files
from xlsr_jax.downstream import encoders
from xlsr_jax.downstream.heads import Wav2Vec2ForCTC

TOL = 1e-4


def test_three_loading_paths_give_identical_features(tmp_path):
  cfg = pu.small_config("layer")
  ref = pu.reference_model(cfg, seed=11)
  sd = pu.state_dict_numpy(ref)
  model_files.save_model(str(tmp_path / "export"), hf_layout.hf_to_ours(sd, cfg), cfg)
  ref.save_pretrained(tmp_path / "hf")
  conv = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
  write_fairseq_checkpoint(tmp_path / "ckpt.pt", to_fairseq(sd, True), {
      "encoder_attention_heads": 4, "layer_norm_first": True, "conv_feature_layers": conv})
  wave, padding = pu.random_batch(2, 6400, [6400, 4100], seed=3)

  features = {}
  for name, path in (("export", tmp_path / "export"), ("hf", tmp_path / "hf"),
                     ("fairseq", tmp_path / "ckpt.pt")):
    loaded = encoders.load_encoder(str(path))
    assert loaded.source == name and loaded.config.hidden_size == cfg.hidden_size
    features[name] = encoders.hidden_states(loaded.params, loaded.config, wave, padding)
  hidden, valid = features["export"]
  assert hidden.shape == (cfg.num_hidden_layers + 1, 2, 19, cfg.hidden_size)
  assert np.asarray(valid).sum(1).tolist() == [19, 12]
  for name in ("hf", "fairseq"):
    np.testing.assert_array_equal(np.asarray(features[name][0]), np.asarray(hidden), err_msg=name)
    np.testing.assert_array_equal(np.asarray(features[name][1]), np.asarray(valid))

  # Against the reference's hidden_states: entries 0..L-1 are the same tensors; the last is the
  # encoder output (after the final LayerNorm).
  with torch.no_grad():
    out = ref.wav2vec2(torch.from_numpy(wave), attention_mask=torch.from_numpy(~padding).long(),
                       output_hidden_states=True)
  v = np.asarray(valid)
  for i in range(cfg.num_hidden_layers):
    assert pu.rel_err(np.asarray(hidden[i])[v], out.hidden_states[i].numpy()[v]) < TOL, i
  assert pu.rel_err(np.asarray(hidden[-1])[v], out.last_hidden_state.numpy()[v]) < TOL

  loaded = encoders.load_encoder(str(tmp_path / "hf"))
  st = encoders.encoder_outputs(loaded.params, loaded.config, wave, padding)
  np.testing.assert_array_equal(np.asarray(st.states), np.asarray(hidden[-1]))
  assert st.frame_rate_hz == 50.0 and st.valid.shape == (2, 19)


@pytest.mark.parametrize("variant", ["layer", "group"])
def test_ctc_logits_equal_hf_wav2vec2_for_ctc(tmp_path, variant):
  cfg = pu.small_config(variant)
  torch.manual_seed(4)
  hf_config = transformers.Wav2Vec2Config(**hf_layout.config_to_hf(cfg, architectures=["Wav2Vec2ForCTC"]),
                                          vocab_size=13, mask_time_prob=0.05)
  ref = transformers.Wav2Vec2ForCTC(hf_config).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(0.1 * torch.randn_like(p))
  ref.save_pretrained(tmp_path / "ctc")
  loaded = encoders.load_encoder(str(tmp_path / "ctc"))
  assert loaded.ctc_head is not None and loaded.ctc_head["kernel"].shape == (cfg.hidden_size, 13)
  wave, padding = pu.random_batch(3, 6400, [6400, 4000, 5121], seed=5)
  ours = Wav2Vec2ForCTC(loaded.config, 13).apply(
      {"params": {"wav2vec2": loaded.params, "lm_head": loaded.ctc_head}},
      jnp.asarray(wave), jnp.asarray(padding))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(wave), attention_mask=torch.from_numpy(~padding).long()).logits.numpy()
  valid = np.asarray(ours["frame_valid"])
  err = pu.rel_err(np.asarray(ours["logits"])[valid], theirs[valid])
  assert err < TOL, f"CTC logits relative error {err:.2e}"
  # And back: ours -> HF state dict equals the original exactly.
  back = hf_layout.ctc_to_hf({"wav2vec2": loaded.params, "lm_head": loaded.ctc_head}, loaded.config)
  original = pu.state_dict_numpy(ref)
  assert sorted(back) == sorted(original)
  for k in original:
    np.testing.assert_array_equal(back[k], original[k], err_msg=k)


def test_missing_or_unreadable_init_names_the_problem(tmp_path):
  with pytest.raises(encoders.InitError, match=r"does not exist.*export directory"):
    encoders.load_encoder(str(tmp_path / "nope"))
  (tmp_path / "workdir").mkdir()
  with pytest.raises(encoders.InitError, match=r"neither model_config.json.*xlsr_jax.export"):
    encoders.load_encoder(str(tmp_path / "workdir"))
  with pytest.raises(encoders.InitError, match="needs the architecture"):
    encoders.load_encoder("random")
