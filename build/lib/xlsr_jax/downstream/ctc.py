"""CTC: the loss (optax), greedy decoding, prefix beam search, and pyctcdecode + KenLM when installed.

Shapes: logits [batch, frames, vocab]; frame_valid bool [batch, frames] (True = real frame);
labels int [batch, label_len] with label_valid bool [batch, label_len]. Token 0 is the blank.
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.downstream.vocabulary import Vocabulary


def ctc_loss(logits: jax.Array, frame_valid: jax.Array, labels: jax.Array, label_valid: jax.Array,
             blank_id: int = 0) -> jax.Array:
  """Per-utterance negative log-likelihood [batch] (float32), summed over frames (not averaged).

  Equals torch.nn.functional.ctc_loss(reduction="none") on the same inputs (tested). An
  utterance whose labels cannot fit its frames gets a large finite loss (optax's log epsilon)
  instead of inf.
  """
  import optax
  return optax.ctc_loss(logits.astype(jnp.float32), 1.0 - frame_valid.astype(jnp.float32),
                        labels.astype(jnp.int32), 1.0 - label_valid.astype(jnp.float32),
                        blank_id=blank_id)


def collapse(ids: Sequence[int], blank_id: int = 0) -> list[int]:
  """CTC collapse of a frame-level path: merge repeats, then drop blanks ([a a _ a b b] -> [a a b])."""
  out, previous = [], None
  for i in ids:
    i = int(i)
    if i != previous and i != blank_id:
      out.append(i)
    previous = i
  return out


def greedy_decode(logits: np.ndarray, frame_valid: np.ndarray | None = None,
                  blank_id: int = 0) -> list[list[int]]:
  """Best path per utterance: argmax per valid frame, collapsed. logits [batch, frames, vocab]."""
  best = np.asarray(logits).argmax(-1)
  lengths = (np.asarray(frame_valid).sum(-1) if frame_valid is not None
             else np.full(best.shape[0], best.shape[1]))
  return [collapse(row[:n], blank_id) for row, n in zip(best, lengths)]


def _logsumexp(a: float, b: float) -> float:
  if a == -math.inf:
    return b
  if b == -math.inf:
    return a
  m = max(a, b)
  return m + math.log(math.exp(a - m) + math.exp(b - m))


def prefix_beam_search(log_probs: np.ndarray, beam_width: int = 8, blank_id: int = 0,
                       prune_below: float = -12.0) -> list[int]:
  """CTC prefix beam search without a language model for one utterance.

  log_probs: [frames, vocab] log-softmax over the valid frames only. Keeps `beam_width`
  prefixes by total probability (blank-ending + non-blank-ending); tokens with log-probability
  below `prune_below` at a frame are not extended. Returns the best prefix's token ids.
  """
  log_probs = np.asarray(log_probs, np.float64)
  beams = {(): (0.0, -math.inf)}  # prefix -> (log p ending in blank, log p ending in non-blank)
  for frame in log_probs:
    candidates = [v for v in np.flatnonzero(frame >= prune_below)] or [int(frame.argmax())]
    next_beams: dict = collections.defaultdict(lambda: (-math.inf, -math.inf))
    for prefix, (p_b, p_nb) in beams.items():
      total = _logsumexp(p_b, p_nb)
      for v in candidates:
        p = frame[v]
        if v == blank_id:
          b, nb = next_beams[prefix]
          next_beams[prefix] = (_logsumexp(b, total + p), nb)
          continue
        extended = prefix + (int(v),)
        b, nb = next_beams[extended]
        if prefix and prefix[-1] == v:  # a repeat needs a blank in between to extend
          next_beams[extended] = (b, _logsumexp(nb, p_b + p))
          b0, nb0 = next_beams[prefix]
          next_beams[prefix] = (b0, _logsumexp(nb0, p_nb + p))
        else:
          next_beams[extended] = (b, _logsumexp(nb, total + p))
    ranked = sorted(next_beams.items(), key=lambda kv: -_logsumexp(*kv[1]))
    beams = dict(ranked[:beam_width])
  best = max(beams.items(), key=lambda kv: _logsumexp(*kv[1]))
  return list(best[0])


def pyctcdecode_available() -> bool:
  try:
    import pyctcdecode  # noqa: F401
  except ImportError:
    return False
  return True


class BeamSearchDecoder:
  """Beam search over CTC log-probabilities, with an optional KenLM n-gram (ARPA or binary).

  Uses pyctcdecode (and kenlm for the LM) when installed: `pip install --no-deps -r
  requirements-lm.txt`. Without pyctcdecode and without an LM it falls back to
  `prefix_beam_search`; asking for an LM without pyctcdecode/kenlm is an error that says so.
  """

  def __init__(self, vocabulary: Vocabulary, *, beam_width: int = 16, kenlm_path: str | None = None,
               alpha: float = 0.5, beta: float = 1.0):
    self.vocabulary, self.beam_width = vocabulary, beam_width
    self._decoder = None
    if kenlm_path and not pyctcdecode_available():
      raise ImportError("an n-gram LM needs pyctcdecode and kenlm: "
                        "pip install --no-deps -r requirements-lm.txt")
    if pyctcdecode_available():
      from pyctcdecode import build_ctcdecoder
      labels = []
      for i, token in enumerate(vocabulary.tokens):
        if i == vocabulary.blank_id:
          labels.append("")
        elif token == vocabulary.word_delimiter:
          labels.append(" ")
        elif token == vocabulary.unk:
          labels.append("⁇")
        else:
          labels.append(token)
      self._decoder = build_ctcdecoder(labels, kenlm_model_path=kenlm_path, alpha=alpha, beta=beta)

  def decode(self, log_probs: np.ndarray) -> str:
    """log_probs [frames, vocab] of the valid frames of one utterance -> text."""
    if self._decoder is not None:
      text = self._decoder.decode(np.asarray(log_probs, np.float32), beam_width=self.beam_width)
      return " ".join(text.split())
    ids = prefix_beam_search(log_probs, self.beam_width, self.vocabulary.blank_id)
    return self.vocabulary.decode(ids)
