"""CTC loss against torch, greedy and beam decoding, the character vocabulary."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from xlsr_jax.downstream import ctc
from xlsr_jax.downstream.vocabulary import Vocabulary, VocabularyError, build_vocabulary


def test_ctc_loss_equals_torch_with_padding():
  rng = np.random.default_rng(0)
  batch, frames, vocab, max_label = 4, 30, 7, 8
  logits = rng.standard_normal((batch, frames, vocab)).astype(np.float32) * 2
  frame_lengths = np.array([30, 22, 15, 9])
  label_lengths = np.array([8, 5, 3, 1])
  labels = rng.integers(1, vocab, (batch, max_label)).astype(np.int32)
  labels[0, 2] = labels[0, 1]  # a repeat needs a blank between: exercises that path
  frame_valid = np.arange(frames)[None] < frame_lengths[:, None]
  label_valid = np.arange(max_label)[None] < label_lengths[:, None]
  ours = np.asarray(ctc.ctc_loss(jnp.asarray(logits), jnp.asarray(frame_valid), jnp.asarray(labels),
                                 jnp.asarray(label_valid)))
  log_probs = torch.log_softmax(torch.from_numpy(logits), -1).transpose(0, 1)  # [T, B, V]
  ref = torch.nn.functional.ctc_loss(log_probs, torch.from_numpy(labels).long(),
                                     torch.from_numpy(frame_lengths), torch.from_numpy(label_lengths),
                                     blank=0, reduction="none").numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
  path = [0, 3, 3, 0, 0, 3, 5, 5, 5, 0, 2, 0]
  assert ctc.collapse(path) == [3, 3, 5, 2]
  logits = np.full((2, len(path), 6), -5.0, np.float32)
  for t, v in enumerate(path):
    logits[0, t, v] = logits[1, t, v] = 5.0
  valid = np.ones((2, len(path)), bool)
  valid[1, 7:] = False  # the second utterance ends after frame 6
  assert ctc.greedy_decode(logits, valid) == [[3, 3, 5, 2], [3, 3, 5]]


def _path_log_probs(paths_probs, vocab):
  lp = np.full((len(paths_probs), vocab), 1e-6)
  for t, dist in enumerate(paths_probs):
    for v, p in dist.items():
      lp[t, v] = p
  lp /= lp.sum(-1, keepdims=True)
  return np.log(lp)


def test_prefix_beam_search_beats_greedy_where_paths_add_up():
  # Greedy picks blank at every frame (0.4 > 0.3), but "1" summed over its paths is more likely.
  frames = [{0: 0.4, 1: 0.3, 2: 0.3}] * 2
  lp = _path_log_probs(frames, 3)
  assert ctc.greedy_decode(lp[None]) == [[]]
  assert ctc.prefix_beam_search(lp, beam_width=8) in ([1], [2])
  # A clear path decodes to its collapse.
  clear = _path_log_probs([{1: 0.9}, {1: 0.9}, {0: 0.9}, {1: 0.9}, {2: 0.9}], 3)
  assert ctc.prefix_beam_search(clear) == [1, 1, 2]


def test_beam_search_decoder_without_lm():
  vocab = build_vocabulary(["ab ba"])
  ids = vocab.encode("ab ba")
  path = []
  for i in ids:
    path += [i, vocab.blank_id]
  lp = np.log(np.full((len(path), vocab.size), 0.01))
  lp[np.arange(len(path)), path] = np.log(0.9)
  assert ctc.BeamSearchDecoder(vocab, beam_width=4).decode(lp) == "ab ba"


def test_beam_search_with_kenlm_prefers_lm_words(tmp_path):
  pytest.importorskip("pyctcdecode")
  pytest.importorskip("kenlm")
  vocab = build_vocabulary(["cat hat"])
  arpa = tmp_path / "lm.arpa"
  arpa.write_text("\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.1\tcat\t-0.3\n"
                  "-3.0\that\t-0.3\n-0.5\t</s>\n\n\\2-grams:\n-0.1\t<s> cat\n-0.1\tcat </s>\n\n\\end\\\n")
  # Acoustics slightly prefer "hat" at the first letter; the LM strongly prefers "cat".
  steps = [{vocab.encode("h")[0]: 0.5, vocab.encode("c")[0]: 0.45}, {vocab.encode("a")[0]: 0.9},
           {vocab.encode("t")[0]: 0.9}]
  lp = np.log(np.full((len(steps), vocab.size), 1e-3))
  for t, dist in enumerate(steps):
    for v, p in dist.items():
      lp[t, v] = np.log(p)
  assert ctc.BeamSearchDecoder(vocab, beam_width=8).decode(lp) == "hat"
  with_lm = ctc.BeamSearchDecoder(vocab, beam_width=8, kenlm_path=str(arpa), alpha=1.0, beta=0.0)
  assert with_lm.decode(lp) == "cat"


def test_vocabulary_from_transcripts_any_script_nfc(tmp_path):
  decomposed = "cafe\u0301 Мир 世界"  # é as e + combining accent
  vocab = build_vocabulary([decomposed, "Hello  world"])
  assert vocab.tokens[:3] == ("<pad>", "<unk>", "|") and vocab.blank_id == 0
  assert "é" in vocab.tokens and "e\u0301" not in vocab.tokens and "\u0301" not in vocab.tokens
  assert {"м", "и", "р", "世", "界"} <= set(vocab.tokens)
  ids = vocab.encode("café мир")
  assert vocab.decode(ids) == "café мир"
  assert vocab.encode("q")[0] == vocab.unk_id
  path = vocab.save(str(tmp_path))
  assert Vocabulary.load(str(tmp_path)) == vocab
  assert json.load(open(path, encoding="utf-8"))["tokens"][2] == "|"
  labels, valid = vocab.encode_batch(["ab", "café"], 6)
  assert labels.shape == (2, 6) and valid.sum(1).tolist() == [2, 4]


def test_vocabulary_head_mismatch_names_both_sizes():
  vocab = build_vocabulary(["abc"])
  with pytest.raises(VocabularyError, match=r"6 tokens.*32 outputs"):
    vocab.check_head(32, "ckpt/")


def test_hf_vocab_json_is_read(tmp_path):
  (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3,
                                                   "|": 4, "a": 5, "b": 6}))
  vocab = Vocabulary.load(str(tmp_path))
  assert vocab.size == 7 and vocab.blank_id == 0 and vocab.decode([5, 4, 6]) == "a b"
