"""Speech translation model against transformers' SpeechEncoderDecoderModel (Wav2Vec2Model with the
adapter + MBartForCausalLM) on converted random weights: logits, loss, conversion both ways."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tests import parity_utils as pu
from xlsr_jax.checkpoints import hf_translation
from xlsr_jax.models.speech_translation import (SpeechToText, SpeechTranslationConfig,
                                                label_smoothed_cross_entropy, shift_tokens_right)
from xlsr_jax.models.text_decoder import DecoderConfig

TOL = 1e-4
VOCAB = 40


def small_config(variant: str, decoder_width: int = 32, tie: bool = True,
                 output_hidden_size: int = 0) -> SpeechTranslationConfig:
  decoder = DecoderConfig(vocab_size=VOCAB, d_model=decoder_width, decoder_layers=2,
                          decoder_attention_heads=4, decoder_ffn_dim=64, max_position_embeddings=32,
                          scale_embedding=True, tie_word_embeddings=tie, dropout=0.0)
  return SpeechTranslationConfig(pu.small_config(variant), decoder,
                                 output_hidden_size=output_hidden_size)


def reference(config: SpeechTranslationConfig, seed: int) -> transformers.SpeechEncoderDecoderModel:
  """A random HF model of `config`, every tensor perturbed so no LayerNorm is the identity."""
  torch.manual_seed(seed)
  hf = hf_translation.config_to_hf(config)
  enc = transformers.Wav2Vec2Config(**hf["encoder"], mask_time_prob=0.0)
  dec = transformers.MBartConfig(**{k: v for k, v in hf["decoder"].items()
                                    if k not in ("model_type", "architectures")})
  model = transformers.SpeechEncoderDecoderModel(
      encoder=transformers.Wav2Vec2Model(enc), decoder=transformers.MBartForCausalLM(dec))
  model.config.pad_token_id = config.decoder.pad_token_id
  model.config.decoder_start_token_id = config.decoder.decoder_start_token_id
  model.eval()
  with torch.no_grad():
    seen = set()
    for p in model.parameters():
      if id(p) not in seen:
        seen.add(id(p))
        p.add_(0.1 * torch.randn_like(p))
  return model


def state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _labels(seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  labels = rng.integers(3, VOCAB, size=(3, 7))
  labels[0, 5:] = -100  # padded label positions (ignored by the loss)
  labels[2, 3:] = -100
  return labels


@pytest.mark.parametrize("variant,padded,width,tie,out_size", [
    ("layer", False, 48, True, 0),  # XLS-R norm variant, unpadded, same widths
    ("layer", True, 32, True, 0),  # padded, encoder 48 -> decoder 32 through enc_to_dec_proj
    ("group", True, 48, False, 0),  # base norm variant, untied lm_head
    ("group", False, 32, True, 32),  # adapter projection (output_hidden_size) to the decoder width
])
def test_logits_and_loss_match_reference(variant, padded, width, tie, out_size):
  cfg = small_config(variant, width, tie, out_size)
  ref = reference(cfg, seed=1)
  params = hf_translation.hf_to_ours(state_dict(ref), cfg)
  assert ("enc_to_dec_proj" in params) == cfg.needs_projection
  lengths = [9600, 5200, 7001] if padded else None
  wave, padding = pu.random_batch(3, 9600, lengths, seed=2)
  labels = _labels(3)
  attention = torch.from_numpy(~padding).long() if padded else None
  with torch.no_grad():
    out = ref(input_values=torch.from_numpy(wave), attention_mask=attention,
              labels=torch.from_numpy(labels))
  decoder_inputs = shift_tokens_right(jnp.asarray(labels), cfg.decoder.pad_token_id,
                                      cfg.decoder.decoder_start_token_id)
  ours = SpeechToText(cfg).apply({"params": params}, jnp.asarray(wave),
                                 jnp.asarray(padding) if padded else None, decoder_inputs)
  valid = np.asarray(ours["encoder_valid"])
  if padded:
    assert valid.sum(1).tolist() == [4, 2, 3]  # 29 / 16 / 21 encoder frames -> 3 adapter layers
  err = pu.rel_err(np.asarray(ours["encoder_states"])[valid],
                   out.encoder_last_hidden_state.numpy()[valid])
  assert err < TOL, f"encoder states: relative error {err:.2e}"
  err = pu.rel_err(ours["logits"], out.logits.numpy())
  assert err < TOL, f"logits: relative error {err:.2e}"
  loss, count = label_smoothed_cross_entropy(ours["logits"], jnp.asarray(labels), 0.0)
  assert int(count) == int((labels != -100).sum())
  np.testing.assert_allclose(float(loss), float(out.loss), rtol=1e-5)
  smoothed, _ = label_smoothed_cross_entropy(ours["logits"], jnp.asarray(labels), 0.1)
  torch_smoothed = torch.nn.functional.cross_entropy(
      out.logits.reshape(-1, VOCAB), torch.from_numpy(labels).reshape(-1), label_smoothing=0.1)
  np.testing.assert_allclose(float(smoothed), float(torch_smoothed), rtol=1e-5)
  assert abs(float(smoothed) - float(loss)) > 1e-3  # the smoothing term is not a no-op


@pytest.mark.parametrize("tie", [True, False])
def test_conversion_round_trip_is_exact(tie):
  cfg = small_config("layer", 32, tie)
  sd = state_dict(reference(cfg, seed=4))
  back = hf_translation.ours_to_hf(hf_translation.hf_to_ours(sd, cfg), cfg)
  sd.pop("encoder.masked_spec_embed", None)  # zero-filled on import when HF omits it
  back.pop("encoder.masked_spec_embed", None)
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert np.array_equal(back[k], sd[k]), k


def test_conversion_names_missing_and_unexpected_keys():
  cfg = small_config("layer", 32)
  sd = state_dict(reference(cfg, seed=5))
  del sd["decoder.model.decoder.layers.1.encoder_attn.k_proj.weight"]
  sd["encoder.adapter.layers.5.conv.weight"] = np.zeros((1,))
  with pytest.raises(hf_translation.ConversionError,
                     match=r"missing 1 key.*layers\.1\.encoder_attn\.k_proj(.|\n)*unexpected 1 key"
                           r".*adapter\.layers\.5"):
    hf_translation.hf_to_ours(sd, cfg)


def test_config_round_trip():
  cfg = small_config("group", 32, False, 32)
  back = hf_translation.config_from_hf(hf_translation.config_to_hf(cfg))
  assert back == cfg


def test_every_parameter_has_logical_axes_known_to_the_rules():
  import flax.linen as nn
  import jax
  from xlsr_jax.models.speech_translation import translation_preset
  from xlsr_jax.sharding.mesh import DEFAULT_RULES
  cfg = translation_preset("tiny", "tiny", output_hidden_size=48, decoder={"tie_word_embeddings": False})
  assert cfg.needs_projection
  shapes = jax.eval_shape(lambda: SpeechToText(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8000)), None, jnp.zeros((1, 3), jnp.int32))["params"])
  leaves = jax.tree_util.tree_leaves_with_path(
      shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  known = {name for name, _ in DEFAULT_RULES}
  assert {str(p[0].key) for p, _ in leaves} == {"wav2vec2", "adapter", "enc_to_dec_proj", "decoder"}
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known | {None}, (path, leaf.names)
    if str(path[0].key) != "wav2vec2":  # the new modules name every axis
      assert None not in leaf.names, (jax.tree_util.keystr(path), leaf.names)
    if jax.tree_util.keystr(path).startswith("['decoder']['layers']"):
      assert leaf.names[0] == "layers" and leaf.value.shape[0] == cfg.decoder.decoder_layers


def test_paper_size_parameter_count_equals_the_reference():
  """xlsr_300m + adapter + the mbart_large decoder (12 x 1024, vocab 250,054), counted without
  allocating: ours by eval_shape, the reference on torch's meta device."""
  import jax
  from xlsr_jax.models.speech_translation import translation_preset
  cfg = translation_preset("xlsr_300m", "mbart_large")
  shapes = jax.eval_shape(lambda: SpeechToText(cfg).init(
      jax.random.key(0), jnp.zeros((1, 16000)), None, jnp.zeros((1, 2), jnp.int32))["params"])
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  hf = hf_translation.config_to_hf(cfg)
  with torch.device("meta"):
    enc = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**hf["encoder"]))
    dec = transformers.MBartForCausalLM(transformers.MBartConfig(
        **{k: v for k, v in hf["decoder"].items() if k not in ("model_type", "architectures")}))
  unique = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
  assert ours == unique(enc) + unique(dec)
  # encoder 315,438,720 + adapter 3 x 6,293,504 + decoder 458,670,080 (256M of it the embedding)
  assert ours == 792_989_312
