"""Load an encoder from any source we read, and compute its features.

Sources (`load_encoder`; the checkpoint formats are read by `checkpoints.weight_sources`, shared with
pretraining's `train.init_from`):
  * an export directory from `xlsr_jax.export` / `xlsr_jax.convert` / a downstream run
    (model_config.json + params/), pretraining, encoder-only or fine-tuned trees;
  * a Hugging Face wav2vec2 directory (config.json + model.safetensors or pytorch_model.bin):
    Wav2Vec2ForPreTraining, Wav2Vec2Model or Wav2Vec2ForCTC (its lm_head is read too);
  * a fairseq .pt (pretrained or fine-tuned XLS-R), through `import_fairseq`, or a fairseq2 .pt
    (the Omnilingual ASR omniASR-W2V encoders), through `import_fairseq2`: `import_pt` tells them
    apart by their keys;
  * "random": the architecture of a given config at random initialisation (the baseline).

Features (`hidden_states`): every layer's hidden states [layers + 1, batch, frames, dim] and the
frame validity mask [batch, frames] (True = a real frame, the complement of padding).
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.checkpoints import weight_sources
from xlsr_jax.models.params import unbox
from xlsr_jax.downstream.heads import stack_hidden_states
from xlsr_jax.downstream.vocabulary import VOCAB_FILE, Vocabulary
from xlsr_jax.models import Wav2Vec2Model
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.params import init_params

SOURCES = weight_sources.SOURCES + ("random",)
InitError = weight_sources.InitError  # re-exported: callers catch it from here


@dataclasses.dataclass
class LoadedEncoder:
  """An encoder's parameters (the `Wav2Vec2Model` tree, numpy) and config, plus any head found.

  ctc_head: {"kernel" [dim, vocab], "bias" [vocab]} of a fine-tuned CTC checkpoint, else None.
  classifier_head: params of a downstream classifier head (our exports), else None.
  vocabulary: vocab.json found beside the checkpoint, else None.
  metadata: what the checkpoint records about itself (task, class names, ...).
  """
  params: dict
  config: Wav2Vec2Config
  source: str
  path: str
  ctc_head: dict | None = None
  classifier_head: dict | None = None
  vocabulary: Vocabulary | None = None
  metadata: dict = dataclasses.field(default_factory=dict)


def _vocabulary_beside(path: str) -> Vocabulary | None:
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  file = os.path.join(directory, VOCAB_FILE)
  return Vocabulary.load(file) if os.path.exists(file) else None


def _split_tree(tree: dict) -> tuple[dict, dict | None, dict | None]:
  """(encoder, ctc head, classifier head) of a pretraining / encoder / downstream params tree."""
  if "wav2vec2" in tree:
    return tree["wav2vec2"], tree.get("lm_head"), tree.get("head")
  return tree, None, None


def random_encoder(config: Wav2Vec2Config, seed: int = 0) -> dict:
  """Freshly initialised `Wav2Vec2Model` params (unboxed numpy) for `config`."""
  params = jax.jit(partial(init_params, Wav2Vec2Model(config)))(jax.random.key(seed))
  return jax.tree.map(np.asarray, unbox(params))


def load_encoder(init: str, *, random_config: Wav2Vec2Config | None = None, seed: int = 0
                 ) -> LoadedEncoder:
  """The encoder (and any head) from an export dir, HF dir, fairseq .pt or "random"."""
  if init == "random":
    if random_config is None:
      raise InitError("init='random' needs the architecture: give a model config (preset)")
    return LoadedEncoder(random_encoder(random_config, seed), random_config, "random", init)
  loaded = weight_sources.load_checkpoint(init)  # (weight_sources.detect_source: errors name the path)
  encoder, ctc_head, classifier = _split_tree(loaded.params)
  if loaded.source != "export":  # a HF CTC head comes beside the encoder; imported heads unread
    ctc_head, classifier = loaded.ctc_head, None
  vocabulary = None if loaded.source in ("fairseq", "fairseq2") else _vocabulary_beside(init)
  return LoadedEncoder(encoder, loaded.config, loaded.source, init, ctc_head, classifier,
                       vocabulary, loaded.metadata)


@partial(jax.jit, static_argnums=(0,))
def _hidden_states(config: Wav2Vec2Config, params: dict, waveform: jax.Array,
                   padding_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  out = Wav2Vec2Model(config).apply({"params": params}, waveform, padding_mask,
                                    return_layer_outputs=True)
  hidden = stack_hidden_states(out)
  valid = out["frame_valid"]
  if valid is None:
    valid = jnp.ones(hidden.shape[1:3], bool)
  return hidden, valid


def hidden_states(params: dict, config: Wav2Vec2Config, waveform: jax.Array,
                  padding_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(hidden [layers + 1, batch, frames, dim], frame_valid bool [batch, frames]), inference mode.

  waveform float32 [batch, samples] (normalised per utterance, as the pretraining input);
  padding_mask bool [batch, samples], True = padded (right padding), or None.
  Entry 0 is the Transformer's input, entry i the output of layer i, the last entry the encoder
  output (`stack_hidden_states`).
  """
  return _hidden_states(config, params, jnp.asarray(waveform, jnp.float32),
                        None if padding_mask is None else jnp.asarray(padding_mask, bool))


@dataclasses.dataclass(frozen=True)
class EncoderOutputs:
  """What a text decoder (speech translation, e.g. an mBART-style decoder) attends to.

  states: float [batch, frames, dim], one vector per 20 ms frame (the encoder output, or the
  chosen layer); valid: bool [batch, frames], True for real frames: use it as the cross-attention
  key mask (padded frames hold values that must not be attended to); frame_rate_hz: frames per
  second of audio (16 kHz / the feature encoder's total stride = 50 for the standard encoder).
  """
  states: jax.Array
  valid: jax.Array
  frame_rate_hz: float


def encoder_outputs(params: dict, config: Wav2Vec2Config, waveform: jax.Array,
                    padding_mask: jax.Array | None = None, *, layer: int = -1) -> EncoderOutputs:
  """The speech-translation interface: encoder states + padding mask for a text decoder.

  `layer` indexes `hidden_states` ([layers + 1]); -1 (default) is the encoder output. A decoder
  projects `states` to its own width if it differs from `config.hidden_size`.
  """
  hidden, valid = hidden_states(params, config, waveform, padding_mask)
  stride = int(np.prod(config.conv_stride))
  return EncoderOutputs(states=hidden[layer], valid=valid, frame_rate_hz=16_000 / stride)
