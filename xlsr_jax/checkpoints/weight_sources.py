"""One dispatch for every model checkpoint we read: the source of a path, and its parameter tree.

Shared by downstream `--config.init=` (`downstream.encoders.load_encoder`) and pretraining
`--config.train.init_from=` (`training.init_from`), so a format added here serves both.

Sources (`detect_source`):
  * "export": a directory from `xlsr_jax.export` / `xlsr_jax.convert` / a downstream run
    (model_config.json + params/): pretraining, encoder-only or fine-tuned trees;
  * "hf": a Hugging Face wav2vec2 directory (config.json + model.safetensors or pytorch_model.bin):
    Wav2Vec2ForPreTraining (quantizer and projections included), Wav2Vec2Model or Wav2Vec2ForCTC;
  * "fairseq": a .pt, unpickled safely (`safe_pickle`): fairseq (pretrained or fine-tuned XLS-R) or
    fairseq2 (Omnilingual omniASR-W2V), told apart by key layout (LoadedCheckpoint.source says which).
"""
from __future__ import annotations

import dataclasses
import os
import jax
import numpy as np

from xlsr_jax.checkpoints import hf_layout, model_files
from xlsr_jax.models.config import Wav2Vec2Config

SOURCES = ("export", "hf", "fairseq", "fairseq2")


class InitError(FileNotFoundError):
  """A checkpoint path that does not exist or is not a model we can read; the message names it."""


@dataclasses.dataclass
class LoadedCheckpoint:
  """A checkpoint's parameters as stored (numpy) and the model config it implies.

  params: the `Wav2Vec2ForPreTraining` tree ({"wav2vec2", "quantizer", "project_q", "project_hid"}),
  the `Wav2Vec2Model` tree (encoder at the root), or a downstream tree ({"wav2vec2", "lm_head"} /
  {"wav2vec2", "head"}). ctc_head: {"kernel" [dim, vocab], "bias" [vocab]} of a HF Wav2Vec2ForCTC,
  else None (our exports keep theirs under params["lm_head"]).
  """
  params: dict
  config: Wav2Vec2Config
  source: str
  path: str
  ctc_head: dict | None = None
  metadata: dict = dataclasses.field(default_factory=dict)


def detect_source(path: str) -> str:
  """"export", "hf" or "fairseq" for a checkpoint path; InitError names the path otherwise."""
  if not os.path.exists(path):
    raise InitError(f"init {path!r} does not exist: expected an export directory (xlsr_jax.export), "
                    f"a Hugging Face wav2vec2 directory, a fairseq or fairseq2 .pt file, or 'random'")
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, model_files.CONFIG_FILE)):
      return "export"
    if model_files.is_training_workdir(path):
      raise InitError(f"init {path} is a training workdir (config.json + checkpoints/), not a model; "
                      f"export it first: python -m xlsr_jax.export --workdir={path} "
                      f"--out={os.path.join(path, 'export', 'orbax')}, then "
                      f"--config.init={os.path.join(path, 'export', 'orbax')}")
    if os.path.exists(os.path.join(path, "config.json")):
      return "hf"
    raise InitError(f"init directory {path} has neither {model_files.CONFIG_FILE} (an xlsr_jax "
                    f"export) nor config.json (a Hugging Face directory); is it a training workdir? "
                    f"export it first: python -m xlsr_jax.export --workdir={path} --out=OUT")
  return "fairseq"


def load_checkpoint(path: str) -> LoadedCheckpoint:
  """The parameter tree and config of an export dir, HF dir or fairseq .pt (see module doc)."""
  source = detect_source(path)
  if source == "export":
    tree, config, metadata = model_files.load_model(path)
    return LoadedCheckpoint(jax.tree.map(np.asarray, tree), config, source, path, metadata=metadata)
  if source == "hf":
    hf_config = model_files.read_json(os.path.join(path, "config.json"))
    config = hf_layout.config_from_hf(hf_config)
    state = model_files.read_hf_state_dict(path)
    if not any(k.endswith("masked_spec_embed") for k in state):  # HF omits it when masking is off
      state["wav2vec2.masked_spec_embed" if any(k.startswith("wav2vec2.") for k in state)
            else "masked_spec_embed"] = np.zeros((config.hidden_size,), np.float32)
    ctc_head = hf_layout.ctc_head_to_ours(state)
    tree = hf_layout.hf_to_ours(state, config, ignore_extra=(
        hf_layout.CTC_HEAD_PREFIX, "projector.", "classifier.", "feature_extractor_head."))
    metadata = {k: hf_config[k] for k in ("architectures", "vocab_size", "final_dropout")
                if k in hf_config}
    return LoadedCheckpoint(tree, config, source, path, ctc_head, metadata)
  from xlsr_jax.checkpoints.fairseq2_import import import_pt
  tree, config, layout = import_pt(path)  # "fairseq" or "fairseq2"
  return LoadedCheckpoint(tree, config, layout, path, metadata={layout: True})

