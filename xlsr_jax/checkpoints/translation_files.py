"""Reading and writing the speech-translation model (encoder + adapter + text decoder) and imported
text decoders: our layout (model_files' Orbax params + model_config.json with a "translation"
section, + the sentencepiece model), and the Hugging Face SpeechEncoderDecoderModel layout.

Used by the translation task (init, export), `python -m xlsr_jax.convert` and the benchmarks.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.checkpoints import hf_translation, model_files
from xlsr_jax.downstream.translation.text import SPM_FILE, Tokenizer
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.speech_translation import SpeechTranslationConfig
from xlsr_jax.models.text_decoder import DecoderConfig

TRANSLATION_KEY = "translation"  # model_config.json section of a translation export
HF_DIR = "hf"

def is_translation_export(path: str) -> bool:
  file = os.path.join(path, model_files.CONFIG_FILE)
  if not os.path.isfile(file):
    return False
  with open(file) as f:
    return TRANSLATION_KEY in json.load(f)


def _config_to_dict(config: SpeechTranslationConfig) -> dict[str, Any]:
  decoder = {f.name: getattr(config.decoder, f.name) for f in dataclasses.fields(DecoderConfig)}
  decoder["dtype"] = jnp.dtype(decoder["dtype"]).name
  decoder["param_dtype"] = jnp.dtype(decoder["param_dtype"]).name
  adapter = {f.name: getattr(config, f.name) for f in dataclasses.fields(SpeechTranslationConfig)
             if f.name not in ("encoder", "decoder")}
  return {"adapter": adapter, "decoder": decoder}


def _config_from_dict(encoder: Wav2Vec2Config, values: dict[str, Any]) -> SpeechTranslationConfig:
  decoder = dict(values["decoder"])
  decoder["dtype"], decoder["param_dtype"] = jnp.dtype(decoder["dtype"]), jnp.dtype(decoder["param_dtype"])
  return SpeechTranslationConfig(encoder, DecoderConfig(**decoder), **values["adapter"])

def without_ctc_head(params: dict, config: SpeechTranslationConfig
                     ) -> tuple[dict, SpeechTranslationConfig]:
  """The translation model alone: the training-only auxiliary CTC head removed."""
  return ({k: v for k, v in params.items() if k != "ctc_head"},
          config.replace(ctc_vocab_size=0))


def save_model(directory: str, params: dict, config: SpeechTranslationConfig,
               tokenizer: Tokenizer | None, metadata: dict | None = None, *, hf: bool = True) -> None:
  """Our layout (+ sentencepiece, if given) in `directory`, the Hugging Face one in `directory`/hf;
  without an auxiliary CTC head (`without_ctc_head`)."""
  params, config = without_ctc_head(params, config)
  model_files.save_model(directory, params, config.encoder, metadata)
  path = os.path.join(directory, model_files.CONFIG_FILE)
  with open(path) as f:
    stored = json.load(f)
  stored[TRANSLATION_KEY] = _config_to_dict(config)
  with open(path, "w") as f:
    json.dump(stored, f, indent=2)
  if tokenizer is not None:
    tokenizer.save(directory)
  if hf:
    save_hf(os.path.join(directory, HF_DIR), params, config, tokenizer)


def load_model(directory: str) -> tuple[dict, SpeechTranslationConfig, Tokenizer | None, dict]:
  """(params, config, tokenizer or None, metadata) of a `save_model` directory."""
  params, encoder, metadata = model_files.load_model(directory)
  with open(os.path.join(directory, model_files.CONFIG_FILE)) as f:
    stored = json.load(f)
  if TRANSLATION_KEY not in stored:
    raise ValueError(f"{directory} is an encoder export, not a speech-translation model")
  has_spm = os.path.exists(os.path.join(directory, SPM_FILE))
  return (jax.tree.map(np.asarray, params), _config_from_dict(encoder, stored[TRANSLATION_KEY]),
          Tokenizer.load(directory) if has_spm else None, metadata)


def save_hf(directory: str, params: dict, config: SpeechTranslationConfig,
            tokenizer: Tokenizer | None = None) -> None:
  """config.json + model.safetensors of a transformers SpeechEncoderDecoderModel (+ the spm model)."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  state = hf_translation.ours_to_hf(jax.tree.map(np.asarray, params), config)
  if config.decoder.tie_word_embeddings:  # safetensors stores one copy of tied tensors
    state.pop("decoder.lm_head.weight")
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_translation.config_to_hf(config), f, indent=2)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save(directory)


def load_hf(directory: str) -> tuple[dict, SpeechTranslationConfig]:
  """A transformers SpeechEncoderDecoderModel directory -> (our params, config)."""
  with open(os.path.join(directory, "config.json")) as f:
    config = hf_translation.config_from_hf(json.load(f))
  state = model_files.read_hf_state_dict(directory)
  return hf_translation.hf_to_ours(state, config), config

DECODER_FILE = "decoder_config.json"


def save_decoder(directory: str, params: dict, config: DecoderConfig, tokenizer: Tokenizer | None,
                 metadata: dict | None = None) -> None:
  """An imported text decoder (e.g. mBART-50's): Orbax params + decoder_config.json (+ spm)."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, model_files.PARAMS_DIR), params, force=True)
  values = _config_to_dict(SpeechTranslationConfig(Wav2Vec2Config(), config))["decoder"]
  with open(os.path.join(directory, DECODER_FILE), "w") as f:
    json.dump({"decoder": values, "metadata": metadata or {}}, f, indent=2)
  if tokenizer is not None:
    tokenizer.save(directory)


def load_decoder(directory: str) -> tuple[dict, DecoderConfig]:
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  file = os.path.join(directory, DECODER_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(f"translation.decoder_init={directory}: no {DECODER_FILE} (write one "
                            f"with python -m xlsr_jax.convert --from=mbart)")
  with open(file) as f:
    values = json.load(f)["decoder"]
  values["dtype"], values["param_dtype"] = jnp.dtype(values["dtype"]), jnp.dtype(values["param_dtype"])
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(directory, model_files.PARAMS_DIR))
  return jax.tree.map(np.asarray, params), DecoderConfig(**values)
