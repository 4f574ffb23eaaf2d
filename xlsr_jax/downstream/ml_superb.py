"""ML-SUPERB-style multilingual ASR + LID on a frozen encoder (task=ml_superb).

The protocol of ML-SUPERB (Shi et al., Interspeech 2023) as its ESPnet recipe
(egs2/ml_superb/asr1) runs it, on any corpus the pipeline reads: a fixed budget of labelled
training audio per language (10 minutes or 1 hour), a frozen encoder whose layers are mixed by
learned softmax weights (SUPERB), a small downstream model trained with CTC on characters, and
joint ASR + LID by a language token in front of every transcript; scored by CER per language,
its macro average and worst language, and LID accuracy (the hypothesis's first token).
Where each value comes from is in experiments/downstream/ml_superb.py.

Shapes: hidden states [layers + 1, batch, frames, dim] (frames at 50 Hz), logits [batch,
frames', vocab] with frames' = frames (subsampling "none") or (frames - 1) // 2 - 2 ("conv2d2").
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.downstream import data as data_lib
from xlsr_jax.downstream import metrics as metrics_lib
from xlsr_jax.downstream.heads import LayerWeightedSum, stack_hidden_states
from xlsr_jax.downstream.vocabulary import Vocabulary, build_vocabulary, normalize_text
from xlsr_jax.models import Wav2Vec2Model
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.layers import Dense, LayerNorm, partitioned
from xlsr_jax.models.transformer import EncoderLayer

SUBSAMPLINGS = ("conv2d2", "none")
_LID_BASE = 0xE000  # language tokens are Unicode private-use characters (one token each)
_BRACKETS = re.compile(r"\[[^()]*\]")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def process_text(text: str) -> str:
  """The recipe's text cleaning (local/data_prep.py process_text): drop "[...]" spans and ASCII
  punctuation. (The recipe upper-cases; our vocabulary lower-cases, which CER does not see.)"""
  return _BRACKETS.sub("", text).translate(_PUNCTUATION)


def language_tokens(languages: Sequence[str]) -> dict[str, str]:
  """{language: its one-character token} for the sorted languages."""
  return {lang: chr(_LID_BASE + i) for i, lang in enumerate(sorted(languages))}


def budget_subset(index: data_lib.SplitIndex, budget_seconds: float, *, seed: int,
                  max_seconds: float = 20.0, sample_rate: int = 16_000
                  ) -> tuple[list[str], dict[str, float]]:
  """(utterance ids, seconds per language): each language's training utterances in a seeded
  random order, those over `max_seconds` skipped (the recipe drops training audio over 20 s),
  taken while the language's total stays within `budget_seconds` (at least one utterance)."""
  rng = np.random.default_rng(seed)
  by_language: dict[str, list[int]] = {}
  for i, lang in enumerate(index.languages):
    by_language.setdefault(lang, []).append(i)
  chosen, seconds = [], {}
  for lang in sorted(by_language):
    total = 0.0
    for i in rng.permutation(by_language[lang]):
      length = index.num_samples[i] / sample_rate
      if length > max_seconds or (total and total + length > budget_seconds):
        continue
      chosen.append(index.ids[i])
      total += length
    seconds[lang] = total
  return chosen, seconds


def build_lid_vocabulary(transcripts: Sequence[str], lid_tokens: dict[str, str]) -> Vocabulary:
  """Characters of the cleaned transcripts plus the language tokens (if any)."""
  return build_vocabulary([process_text(t) for t in transcripts] + [" ".join(lid_tokens.values())])


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the ml_superb task fixed before training: vocabulary, language tokens ({} without
  LID), the budget's utterance ids and its seconds per language."""
  vocab: Vocabulary
  lid_tokens: dict[str, str]
  keep_ids: list[str]
  seconds: dict[str, float]


@dataclasses.dataclass(frozen=True)
class MLSuperbLabeler(data_lib.CtcLabeler):
  """CTC labels of "<language token> <cleaned transcript>" (joint ASR + LID, as the recipe's
  `--lid true`: "[lang] TEXT")."""
  lid_tokens: tuple[tuple[str, str], ...] = ()

  def label_text(self, transcript: str, language: str) -> str:
    return f"{dict(self.lid_tokens).get(language, '')} {process_text(transcript)}"


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
  """[length, dim] absolute sinusoidal encoding (ESPnet PositionalEncoding)."""
  position = np.arange(length)[:, None]
  div = np.exp(np.arange(0, dim, 2) * -(math.log(10000.0) / dim))
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(position * div)
  table[:, 1::2] = np.cos(position * div)[:, :dim // 2]
  return jnp.asarray(table)


class Conv2dSubsampling2(nn.Module):
  """ESPnet conv2d2: Conv2d(1->C, 3x3, stride 2), ReLU, Conv2d(C->C, 3x3, stride 1), ReLU, Linear
  to C: [batch, frames, features] -> [batch, (frames - 1) // 2 - 2, C]."""
  channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x[..., None].astype(self.dtype)  # [batch, frames, features, 1]
    for name, stride, c_in in (("conv1", 2, 1), ("conv2", 1, self.channels)):
      kernel = self.param(f"{name}_kernel", partitioned(nn.initializers.lecun_normal(),
                                                        (None, None, None, "mlp")),
                          (3, 3, c_in, self.channels), self.param_dtype)
      bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, ("mlp",)),
                        (self.channels,), self.param_dtype)
      h = jax.lax.conv_general_dilated(h, kernel.astype(self.dtype), (stride, stride), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.nn.relu(h + bias.astype(self.dtype))
    h = h.reshape(h.shape[0], h.shape[1], -1)
    return Dense(self.channels, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="out")(h)


def subsampled_valid(frame_valid: jax.Array, subsampling: str) -> jax.Array:
  """bool [batch, frames'] for the subsampled frames (frames' as in the module docstring)."""
  if subsampling == "none":
    return frame_valid
  lengths = jnp.sum(frame_valid, axis=-1)
  out_frames = (frame_valid.shape[1] - 1) // 2 - 2
  return jnp.arange(out_frames)[None, :] < ((lengths - 1) // 2 - 2)[:, None]


class Wav2Vec2ForMLSuperb(nn.Module):
  """Frozen encoder -> SUPERB layer weights -> Linear to `projection_dim` (the recipe's
  "preencoder") -> subsampling -> `num_layers` pre-LN Transformer blocks -> LayerNorm ->
  CTC head `lm_head`: waveform [batch, samples] -> dict(logits [batch, frames', vocab] float32,
  frame_valid [batch, frames']).

  The encoder's gradient is stopped (its parameters are also frozen by the optimizer). Time /
  channel masks from the fine-tuning recipe, if given, zero frames / channels of the weighted
  features (SpecAugment's time and frequency masks on the SSL features).
  """
  config: Wav2Vec2Config
  vocab_size: int
  projection_dim: int = 80
  hidden_size: int = 256
  num_heads: int = 8
  ffn_size: int = 1024
  num_layers: int = 2
  dropout: float = 0.1
  subsampling: str = "conv2d2"

  def downstream_config(self) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads, intermediate_size=self.ffn_size,
        do_stable_layer_norm=True, hidden_dropout=self.dropout, attention_dropout=self.dropout,
        activation_dropout=self.dropout, layerdrop=0.0, attention_impl="manual",
        dtype=self.config.dtype, param_dtype=self.config.param_dtype)

  @nn.compact
  def __call__(self, waveform: jax.Array, padding_mask: jax.Array | None = None, *,
               mask_time: jax.Array | None = None, channel_mask: jax.Array | None = None,
               deterministic: bool = True) -> dict[str, Any]:
    if self.subsampling not in SUBSAMPLINGS:
      raise ValueError(f"subsampling {self.subsampling!r} is not one of {SUBSAMPLINGS}")
    cfg, dcfg = self.config, self.downstream_config()
    out = Wav2Vec2Model(cfg, name="wav2vec2")(waveform, padding_mask, deterministic=True,
                                              return_layer_outputs=True)
    hidden = jax.lax.stop_gradient(stack_hidden_states(out))
    valid = out["frame_valid"]
    if valid is None:
      valid = jnp.ones(hidden.shape[1:3], bool)
    x = LayerWeightedSum(cfg.param_dtype, name="layer_weights")(hidden)  # [batch, frames, dim]
    if mask_time is not None:
      x = jnp.where(mask_time[..., None], 0.0, x)
    if channel_mask is not None:
      x = jnp.where(channel_mask[:, None, :], 0.0, x)
    x = Dense(self.projection_dim, ("embed", "mlp"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              name="preencoder")(x)
    if self.subsampling == "conv2d2":
      x = Conv2dSubsampling2(self.hidden_size, cfg.dtype, cfg.param_dtype, name="subsampling")(x)
    else:
      x = Dense(self.hidden_size, ("mlp", "embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                name="input_layer")(x)
    valid = subsampled_valid(valid, self.subsampling)
    x = x * math.sqrt(self.hidden_size) + sinusoidal_positions(x.shape[1], self.hidden_size)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    for i in range(self.num_layers):
      x, _ = EncoderLayer(dcfg, deterministic, name=f"layer_{i}")(x, valid)
    x = LayerNorm(epsilon=1e-12, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="after_norm")(x)
    logits = Dense(self.vocab_size, ("embed", "vocab"), dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="lm_head")(x)
    return dict(logits=logits.astype(jnp.float32), frame_valid=valid)


def score(hyps: Sequence[str], transcripts: Sequence[str], languages: Sequence[str],
          vocab: Vocabulary, lid_tokens: dict[str, str]) -> dict[str, Any]:
  """CER / WER per language, macro CER, worst-language CER and LID accuracy of hypotheses that
  start with a language token (as the recipe's scoring: the token is removed before CER)."""
  to_language = {token: lang for lang, token in lid_tokens.items()}
  predicted, texts = [], []
  for hyp in hyps:
    first = hyp.strip()[:1]
    predicted.append(to_language.get(first, ""))
    texts.append(" ".join("".join(c for c in hyp if c not in to_language).split()))
  refs = [normalize_text(process_text(t), vocab.lowercase) for t in transcripts]
  out = metrics_lib.asr_metrics(refs, texts, languages)
  per_language_cer = {lang: m["cer"] for lang, m in out["per_language"].items()}
  worst = max(per_language_cer, key=per_language_cer.get)
  out.update(macro_cer=float(np.mean(list(per_language_cer.values()))),
             worst_language=worst, worst_language_cer=per_language_cer[worst])
  if not lid_tokens:
    return out
  names = sorted(lid_tokens)
  ids = {lang: i for i, lang in enumerate(names)}
  true = np.asarray([ids.get(l, -1) for l in languages])
  pred = np.asarray([ids.get(p, -1) for p in predicted])
  keep = true >= 0
  none = len(names)  # a hypothesis without a language token: its own (wrong) class
  pred = np.where(pred < 0, none, pred)
  lid = metrics_lib.classification_metrics(true[keep], pred[keep], names + ["<none>"])
  out.update(lid_accuracy=lid["accuracy"], lid_balanced_accuracy=lid["balanced_accuracy"],
             lid_macro_f1=lid["macro_f1"])
  out["lid_no_language_token"] = int(np.sum(pred[keep] == none))
  for lang, m in out["per_language"].items():
    mask = np.asarray(languages) == lang
    m["lid_accuracy"] = float(np.mean(pred[mask] == true[mask]))
  return out
