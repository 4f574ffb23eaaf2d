"""`python -m xlsr_jax.convert` for speech translation: a transformers SpeechEncoderDecoderModel
directory both ways, and an mBART decoder (with mBART's own sentencepiece layout)."""
import io

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from tests import parity_utils as pu
from tests.test_translation_parity import reference, small_config
from xlsr_jax import convert
from xlsr_jax.downstream.translation import task as translation
from xlsr_jax.checkpoints import translation_files
from xlsr_jax.downstream.translation import text
from xlsr_jax.models.speech_translation import SpeechToText
from xlsr_jax.models.text_decoder import TextDecoder


def _fairseq_style_spm(path: str) -> None:
  """A sentencepiece model with sentencepiece's default ids (unk 0, bos 1, eos 2), as mBART's."""
  import sentencepiece as spm
  words = ["water", "house", "city", "friend", "book", "school", "train", "morning", "evening"]
  rng = np.random.default_rng(0)
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(rng.choice(words, 5)) for _ in range(200)]),
      model_writer=buffer, vocab_size=30, hard_vocab_limit=False, minloglevel=2)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


def _logits(model, wave, tokens):
  with torch.no_grad():
    return model(input_values=torch.from_numpy(wave), decoder_input_ids=torch.from_numpy(tokens)).logits.numpy()


def test_speech_encoder_decoder_directory_both_ways(tmp_path, capsys):
  cfg = small_config("layer", 32)
  ref = reference(cfg, seed=7)
  ref.save_pretrained(tmp_path / "hf_in")
  _fairseq_style_spm(str(tmp_path / "hf_in" / text.SPM_FILE))
  assert convert.main(["--from=hf", f"--input={tmp_path / 'hf_in'}", f"--output={tmp_path / 'ours'}"]) == 0
  assert "wrote a speech-translation model" in capsys.readouterr().out
  params, loaded_cfg, tokenizer, _ = translation_files.load_model(str(tmp_path / "ours"))
  assert loaded_cfg == cfg and tokenizer.offset == 1
  wave, _ = pu.random_batch(2, 9600, None, seed=3)
  tokens = np.array([[2, 5, 6, 7, 8], [2, 9, 10, 1, 1]])
  expected = _logits(ref, wave, tokens)
  ours = SpeechToText(loaded_cfg).apply({"params": params}, jnp.asarray(wave), None, jnp.asarray(tokens))
  assert pu.rel_err(ours["logits"], expected) < 1e-4
  assert convert.main(["--from=ours", f"--input={tmp_path / 'ours'}", f"--output={tmp_path / 'hf_out'}"]) == 0
  back = transformers.SpeechEncoderDecoderModel.from_pretrained(str(tmp_path / "hf_out")).eval()
  np.testing.assert_allclose(_logits(back, wave, tokens), expected, rtol=1e-5, atol=1e-5)


def test_mbart_decoder_import_matches_the_reference_decoder(tmp_path, capsys):
  torch.manual_seed(0)
  hf_cfg = transformers.MBartConfig(vocab_size=40, d_model=32, encoder_layers=1, decoder_layers=2,
                                    encoder_attention_heads=4, decoder_attention_heads=4,
                                    encoder_ffn_dim=64, decoder_ffn_dim=64,
                                    max_position_embeddings=32, scale_embedding=True)
  model = transformers.MBartForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    model.final_logits_bias.zero_()
  model.save_pretrained(tmp_path / "mbart")
  _fairseq_style_spm(str(tmp_path / "mbart" / text.SPM_FILE))
  assert convert.main(["--from=mbart", f"--input={tmp_path / 'mbart'}", f"--output={tmp_path / 'dec'}"]) == 0
  assert "wrote an mBART decoder" in capsys.readouterr().out
  params, cfg = translation_files.load_decoder(str(tmp_path / "dec"))
  assert (cfg.decoder_layers, cfg.d_model, cfg.vocab_size, cfg.scale_embedding) == (2, 32, 40, True)
  rng = np.random.default_rng(1)
  enc = rng.standard_normal((2, 6, 32)).astype(np.float32)
  enc_mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
  tokens = np.array([[2, 5, 6, 7], [2, 8, 9, 10]])
  with torch.no_grad():
    hidden = model.model.decoder(input_ids=torch.from_numpy(tokens),
                                 encoder_hidden_states=torch.from_numpy(enc),
                                 encoder_attention_mask=torch.from_numpy(enc_mask)).last_hidden_state
    expected = model.lm_head(hidden).numpy()
  ours, _ = TextDecoder(cfg).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(enc),
                                   jnp.asarray(enc_mask.astype(bool)))
  assert pu.rel_err(ours, expected) < 1e-4
  # mBART's sentencepiece layout: model ids are piece ids + 1, </s> = 2, decoding inverts it.
  tok = text.Tokenizer.load(str(tmp_path / "dec"))
  ids = tok.encode("water book school")
  assert ids[-1] == text.EOS_ID and min(ids[:-1]) > text.UNK_ID
  assert tok.decode(ids) == "water book school"
  assert ids[:-1] == [i + 1 for i in tok.sp.encode("water book school")]


def test_mbart_import_names_a_wrong_directory(tmp_path, capsys):
  (tmp_path / "config.json").write_text('{"model_type": "wav2vec2"}')
  assert convert.main(["--from=mbart", f"--input={tmp_path}", f"--output={tmp_path / 'o'}"]) == 2
  assert "model_type='wav2vec2', expected 'mbart'" in capsys.readouterr().err


def test_imported_decoder_and_its_tokenizer_drive_the_task(tmp_path):
  """translation.decoder_init: the model takes the imported decoder (config and weights) and its
  sentencepiece model (mBART layout) instead of training one."""
  from xlsr_jax.downstream import encoders
  from xlsr_jax.downstream.task_config_defaults import get_default_config
  from xlsr_jax.downstream.data import SplitIndex
  from xlsr_jax.models.config import get_preset
  from xlsr_jax.models.text_decoder import DecoderConfig
  decoder = DecoderConfig(vocab_size=40, d_model=32, decoder_layers=1, decoder_attention_heads=4,
                          decoder_ffn_dim=64, max_position_embeddings=130)
  import jax
  boxed = jax.jit(TextDecoder(decoder).init)(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                              jnp.zeros((1, 3, 32)), jnp.ones((1, 3), bool))["params"]
  params = jax.tree.map(lambda x: np.asarray(getattr(x, "value", x)), boxed,
                        is_leaf=lambda x: hasattr(x, "value"))
  _fairseq_style_spm(str(tmp_path / text.SPM_FILE))
  tok = text.Tokenizer.load(str(tmp_path))
  translation_files.save_decoder(str(tmp_path / "dec"), params, decoder, tok)
  config = get_default_config()
  config.task = "ast"
  config.translation.decoder_init = str(tmp_path / "dec")
  index = SplitIndex(ids=["a"], languages=["de"], speakers=["s"], transcripts=["Wasser Buch"],
                     num_samples=[16000])
  loaded = encoders.LoadedEncoder({}, get_preset("tiny"), "random", "random")
  model, parts, labeler, tokenizer, counts = translation.build(config, loaded, get_preset("tiny"), index)
  assert model.config.decoder == decoder and tokenizer.offset == 1 and counts["vocab_size"] == 31
  np.testing.assert_array_equal(parts["decoder"]["embed_tokens"], params["embed_tokens"])
  assert tokenizer.encode("water book") == [i + 1 for i in tok.sp.encode("water book")] + [2]


def test_a_translation_export_as_init_keeps_its_adapter_decoder_and_tokenizer(tmp_path):
  import jax
  from xlsr_jax.downstream import encoders
  from xlsr_jax.downstream.data import SplitIndex
  from xlsr_jax.downstream.task_config_defaults import get_default_config
  from xlsr_jax.models.speech_translation import translation_preset
  targets = ["water book", "city friend", "train school"] * 20
  tok = text.train_tokenizer(targets, 40)
  cfg = translation_preset("tiny", "tiny", decoder={"vocab_size": tok.vocab_size},
                           num_adapter_layers=2)
  boxed = jax.jit(SpeechToText(cfg).init)(jax.random.key(0), jnp.zeros((1, 8000)))["params"]
  params = jax.tree.map(lambda x: np.asarray(getattr(x, "value", x)), boxed,
                        is_leaf=lambda x: hasattr(x, "value"))
  translation_files.save_model(str(tmp_path / "m"), params, cfg, tok, hf=False)
  config = get_default_config()
  config.task = "ast"
  loaded = encoders.load_encoder(str(tmp_path / "m"))
  index = SplitIndex(ids=["a"], languages=["de"], speakers=["s"], transcripts=["Wasser Buch"],
                     num_samples=[16000])
  model, parts, _, tokenizer, _ = translation.build(config, loaded, loaded.config, index)
  assert model.config == cfg and tokenizer.proto == tok.proto
  assert set(parts) == {"wav2vec2", "adapter", "decoder"}
  np.testing.assert_array_equal(parts["adapter"]["conv_1_kernel"], params["adapter"]["conv_1_kernel"])
