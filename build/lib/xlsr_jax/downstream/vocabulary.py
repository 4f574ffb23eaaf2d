"""Character vocabulary for CTC: built from training transcripts, saved beside the model as JSON.

Any script: transcripts are Unicode NFC-normalised (optionally lower-cased), runs of whitespace
become the word delimiter "|", and every remaining character is a token. Token 0 is the CTC
blank, which also pads label arrays ("<pad>", as in Hugging Face `Wav2Vec2CTCTokenizer`), then
"<unk>" for characters not seen in training, then "|", then the characters in sorted order.
"""
from __future__ import annotations

import dataclasses
import json
import os
import unicodedata
from typing import Iterable, Sequence

import numpy as np

VOCAB_FILE = "vocab.json"
BLANK, UNK, DELIMITER = "<pad>", "<unk>", "|"


class VocabularyError(ValueError):
  """A vocabulary that cannot be used with a checkpoint or a transcript."""


def normalize_text(text: str, lowercase: bool = True) -> str:
  """NFC, optional lower-casing, whitespace runs collapsed to one space, stripped."""
  text = unicodedata.normalize("NFC", text)
  if lowercase:
    text = text.lower()
  return " ".join(text.split())


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """tokens[i] is the string of token id i; tokens[blank_id] is the CTC blank."""
  tokens: tuple[str, ...]
  lowercase: bool = True
  blank: str = BLANK
  unk: str = UNK
  word_delimiter: str = DELIMITER

  def __post_init__(self):
    if len(set(self.tokens)) != len(self.tokens):
      raise VocabularyError(f"vocabulary has duplicate tokens: {self.tokens}")
    for name in ("blank", "unk", "word_delimiter"):
      if getattr(self, name) not in self.tokens:
        raise VocabularyError(f"vocabulary has no {name} token {getattr(self, name)!r}")

  @property
  def size(self) -> int:
    return len(self.tokens)

  @property
  def blank_id(self) -> int:
    return self.tokens.index(self.blank)

  @property
  def unk_id(self) -> int:
    return self.tokens.index(self.unk)

  @property
  def delimiter_id(self) -> int:
    return self.tokens.index(self.word_delimiter)

  def _index(self) -> dict[str, int]:
    return {t: i for i, t in enumerate(self.tokens)}

  def encode(self, text: str) -> list[int]:
    """Text -> token ids (spaces become the delimiter, unseen characters <unk>)."""
    index, unk = self._index(), self.unk_id
    text = normalize_text(text, self.lowercase).replace(" ", self.word_delimiter)
    return [index.get(ch, unk) for ch in text]

  def decode(self, ids: Iterable[int]) -> str:
    """Token ids (already CTC-collapsed) -> text; blanks dropped, delimiters become spaces."""
    special = {self.blank_id}
    chars = [self.tokens[i] for i in ids if i not in special]
    text = "".join(" " if c == self.word_delimiter else c for c in chars)
    return " ".join(text.split())

  def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels int32 [batch, max_length] padded with blank, label_valid bool [batch, max_length]).

    A transcript longer than max_length is an error naming it (CTC targets cannot be cropped).
    """
    labels = np.full((len(texts), max_length), self.blank_id, np.int32)
    valid = np.zeros((len(texts), max_length), bool)
    for i, text in enumerate(texts):
      ids = self.encode(text)
      if len(ids) > max_length:
        raise VocabularyError(f"transcript of {len(ids)} tokens exceeds max_label_length="
                              f"{max_length}: {text[:80]!r}")
      labels[i, :len(ids)] = ids
      valid[i, :len(ids)] = True
    return labels, valid

  def check_head(self, head_size: int, where: str) -> None:
    """Raises VocabularyError naming both sizes when a CTC head has a different output size."""
    if head_size != self.size:
      raise VocabularyError(f"vocabulary has {self.size} tokens but the CTC head of {where} has "
                            f"{head_size} outputs; use the vocabulary saved with that checkpoint")

  # Files.

  def to_json(self) -> dict:
    return {"tokens": list(self.tokens), "lowercase": self.lowercase, "blank": self.blank,
            "unk": self.unk, "word_delimiter": self.word_delimiter}

  def save(self, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, VOCAB_FILE)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_json(), f, ensure_ascii=False, indent=1)
    return path

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    """Ours ({"tokens": [...]}) or a Hugging Face `vocab.json` ({token: id}, "<pad>" blank)."""
    if os.path.isdir(path):
      path = os.path.join(path, VOCAB_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no vocabulary file")
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if "tokens" in data:
      return cls(tuple(data["tokens"]), lowercase=data.get("lowercase", True),
                 blank=data.get("blank", BLANK), unk=data.get("unk", UNK),
                 word_delimiter=data.get("word_delimiter", DELIMITER))
    by_id = sorted(data.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
      raise VocabularyError(f"{path}: token ids are not 0..{len(by_id) - 1}")
    return cls(tuple(t for t, _ in by_id), lowercase=False)


def build_vocabulary(transcripts: Iterable[str], lowercase: bool = True) -> Vocabulary:
  """Every character of the normalised training transcripts, after blank, unk and delimiter."""
  chars = set()
  for text in transcripts:
    chars.update(normalize_text(text, lowercase).replace(" ", ""))
  chars -= {BLANK, UNK, DELIMITER}
  if not chars:
    raise VocabularyError("no characters in the training transcripts (are they all empty?)")
  return Vocabulary((BLANK, UNK, DELIMITER) + tuple(sorted(chars)), lowercase=lowercase)
