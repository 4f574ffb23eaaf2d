"""Parity of our encoder with the Hugging Face PyTorch reference on converted random weights."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import parity_utils as pu
from xlsr_jax.checkpoints import hf_layout
from xlsr_jax.models import Wav2Vec2Model

TOL = 1e-4


@pytest.mark.parametrize("variant", ["layer", "group"])
@pytest.mark.parametrize("padded", [False, True])
def test_encoder_hidden_states_match_reference(variant, padded):
  cfg = pu.small_config(variant)
  ref = pu.reference_model(cfg, seed=1)
  params = hf_layout.hf_to_ours(pu.state_dict_numpy(ref), cfg)
  lengths = [6400, 4000, 5121] if padded else None
  wave, padding = pu.random_batch(3, 6400, lengths, seed=2)

  with torch.no_grad():
    out = ref.wav2vec2(torch.from_numpy(wave),
                       attention_mask=torch.from_numpy(~padding).long() if padded else None,
                       output_hidden_states=True)
  ours = Wav2Vec2Model(cfg).apply({"params": params["wav2vec2"]}, jnp.asarray(wave),
                                  jnp.asarray(padding) if padded else None,
                                  return_layer_outputs=True)
  frames = ours["last_hidden_state"].shape[1]
  valid = np.ones((3, frames), bool) if not padded else np.asarray(ours["frame_valid"])
  assert valid.sum(1).tolist() == ([frames] * 3 if not padded else [19, 12, 15])

  # Reference (transformers 5) hidden_states: [input of layer 0, output of layer 0, ..., layer L-1];
  # the final LayerNorm (pre-LN variant) is only in last_hidden_state.
  assert len(out.hidden_states) == cfg.num_hidden_layers + 1
  layer_outputs = np.asarray(ours["layer_outputs"])
  for i in range(cfg.num_hidden_layers):
    err = pu.rel_err(layer_outputs[i][valid], out.hidden_states[i + 1].numpy()[valid])
    assert err < TOL, f"layer {i}: relative error {err:.2e}"
  err = pu.rel_err(np.asarray(ours["last_hidden_state"])[valid], out.last_hidden_state.numpy()[valid])
  assert err < TOL, f"last_hidden_state: relative error {err:.2e}"
  err = pu.rel_err(np.asarray(ours["extract_features"])[valid], out.extract_features.numpy()[valid])
  assert err < TOL, f"extract_features: relative error {err:.2e}"


@pytest.mark.parametrize("variant", ["layer", "group"])
def test_conversion_round_trip_is_exact(variant):
  cfg = pu.small_config(variant)
  sd = pu.state_dict_numpy(pu.reference_model(cfg, seed=3))
  back = hf_layout.ours_to_hf(hf_layout.hf_to_ours(sd, cfg), cfg)
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


def test_conversion_lists_missing_and_unexpected_keys():
  cfg = pu.small_config("layer")
  sd = pu.state_dict_numpy(pu.reference_model(cfg))
  del sd["wav2vec2.encoder.layers.1.attention.q_proj.weight"]
  sd["wav2vec2.encoder.layers.7.attention.q_proj.weight"] = np.zeros((1,))
  with pytest.raises(hf_layout.ConversionError, match=r"missing 1 key.*layers\.1\.attention\.q_proj"
                     r"(.|\n)*unexpected 1 key.*layers\.7"):
    hf_layout.hf_to_ours(sd, cfg)
