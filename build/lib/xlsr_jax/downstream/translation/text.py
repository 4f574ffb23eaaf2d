"""Target text for speech translation: a sentencepiece tokenizer and sacrebleu scores.

Token ids follow mBART's convention: <s> = 0, <pad> = 1, </s> = 2, <unk> = 3 (so a small model
trained here and mBART-50's own share the decoder's special ids). Labels are the pieces of the
target followed by </s>, padded with -100 (ignored by the loss); the decoder input is the labels
shifted right behind the start token (</s>, as in mBART).
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

SPM_FILE = "sentencepiece.bpe.model"  # mBART-50's file name, so either model drops in
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
IGNORE = -100


class TokenizerError(ValueError):
  """A sentencepiece model that is missing or does not fit (the message names the file)."""


class Tokenizer:
  """A sentencepiece model with mBART's special ids; `encode_batch` / `decode`.

  Two layouts: a model trained here has the ids natively; mBART(-50)'s own sentencepiece.bpe.model
  has <unk> = 0, <s> = 1, </s> = 2 and the model ids are fairseq's (piece id + 1, <unk> -> 3, the
  language codes after the pieces), as transformers' MBart50Tokenizer maps them.
  """

  def __init__(self, model_proto: bytes, path: str = "<memory>"):
    import sentencepiece as spm
    self.proto, self.path = model_proto, path
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    ids = (self.sp.bos_id(), self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id())
    if ids == (BOS_ID, PAD_ID, EOS_ID, UNK_ID):
      self.offset = 0
    elif (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) == (0, 1, 2):
      self.offset = 1  # fairseq / mBART dictionary on top of the sentencepiece ids
    else:
      raise TokenizerError(f"{path}: special ids (bos, pad, eos, unk) are {ids}, expected "
                           f"{(BOS_ID, PAD_ID, EOS_ID, UNK_ID)} (mBART's) or mBART's own "
                           f"sentencepiece layout (unk 0, bos 1, eos 2)")

  @property
  def vocab_size(self) -> int:
    """Ids this tokenizer produces (an mBART decoder has more: its language codes)."""
    return self.sp.get_piece_size() + self.offset

  def _to_model(self, piece_ids: list[int]) -> list[int]:
    if not self.offset:
      return piece_ids
    return [UNK_ID if i == self.sp.unk_id() else i + self.offset for i in piece_ids]

  def _from_model(self, ids: list[int]) -> list[int]:
    if not self.offset:
      return ids
    return [self.sp.unk_id() if i == UNK_ID else i - self.offset for i in ids
            if UNK_ID <= i < self.vocab_size]

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    if os.path.isdir(path):
      path = os.path.join(path, SPM_FILE)
    if not os.path.exists(path):
      raise TokenizerError(f"no sentencepiece model at {path}")
    with open(path, "rb") as f:
      return cls(f.read(), path)

  def save(self, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SPM_FILE)
    with open(path, "wb") as f:
      f.write(self.proto)
    return path

  def encode(self, text: str) -> list[int]:
    """Model ids of `text` followed by </s>."""
    return self._to_model(self.sp.encode(text)) + [EOS_ID]

  def encode_batch(self, texts: Sequence[str], max_length: int) -> np.ndarray:
    """labels int32 [batch, max_length]: pieces + </s>, then -100; too long is an error."""
    out = np.full((len(texts), max_length), IGNORE, np.int32)
    for i, text in enumerate(texts):
      ids = self.encode(text)
      if len(ids) > max_length:
        raise TokenizerError(f"target {text[:60]!r} is {len(ids)} tokens with </s>, more than "
                             f"translation.max_target_length={max_length}")
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of generated ids: stops at </s>, drops the other special ids."""
    kept = []
    for t in (int(x) for x in ids):
      if t == EOS_ID:
        break
      if t not in (BOS_ID, PAD_ID):
        kept.append(t)
    return self.sp.decode(self._from_model(kept))


def train_tokenizer(texts: Sequence[str], vocab_size: int, *, model_type: str = "unigram",
                    seed_text_limit: int = 100_000) -> Tokenizer:
  """A sentencepiece model trained on `texts` (the task's training targets), mBART special ids.

  `vocab_size` is an upper bound: a small corpus may support fewer pieces (hard_vocab_limit off).
  """
  import sentencepiece as spm
  if not texts:
    raise TokenizerError("no training targets to train a sentencepiece model on")
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)[:seed_text_limit]), model_writer=buffer,
      vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
      bos_id=BOS_ID, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, hard_vocab_limit=False,
      num_threads=1, minloglevel=2)
  return Tokenizer(buffer.getvalue())


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
  """Corpus-level BLEU and chrF (sacrebleu defaults: 13a tokenizer, case-sensitive) with signatures."""
  import sacrebleu
  bleu = sacrebleu.metrics.BLEU()
  chrf = sacrebleu.metrics.CHRF()
  refs = [list(references)]
  b = bleu.corpus_score(list(hypotheses), refs)
  c = chrf.corpus_score(list(hypotheses), refs)
  return {"bleu": float(b.score), "chrf": float(c.score), "bleu_signature": str(bleu.get_signature()),
          "chrf_signature": str(chrf.get_signature()), "num_utterances": len(hypotheses)}


def translation_metrics(hypotheses: Sequence[str], references: Sequence[str],
                        languages: Sequence[str]) -> dict:
  """Overall corpus BLEU / chrF, per source language, and the unweighted mean over languages
  (the paper's "average X -> En BLEU")."""
  if not (len(hypotheses) == len(references) == len(languages)):
    raise ValueError(f"{len(hypotheses)} hypotheses, {len(references)} references, "
                     f"{len(languages)} languages")
  out = corpus_scores(hypotheses, references)
  per_language = {}
  for lang in sorted(set(languages)):
    idx = [i for i, l in enumerate(languages) if l == lang]
    scores = corpus_scores([hypotheses[i] for i in idx], [references[i] for i in idx])
    per_language[f"{lang}-en"] = {k: scores[k] for k in ("bleu", "chrf", "num_utterances")}
  out["per_language"] = per_language
  out["bleu_average_over_languages"] = float(np.mean([v["bleu"] for v in per_language.values()]))
  out["chrf_average_over_languages"] = float(np.mean([v["chrf"] for v in per_language.values()]))
  return out
