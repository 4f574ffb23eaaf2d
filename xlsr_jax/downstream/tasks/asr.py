"""ASR (task=asr): the encoder fine-tuned with a CTC head on characters; WER / CER per language.

The CTC pieces (loss, eval step, greedy / beam decoding, the label-length check) are functions
here, shared with ML-SUPERB (`tasks.multilingual_asr`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xlsr_jax.checkpoints import model_files
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.downstream import ctc, heads, metrics
from xlsr_jax.downstream.data import CtcLabeler
from xlsr_jax.downstream.task_setup import TaskError
from xlsr_jax.downstream.tasks.base import Config, Task, check_some_fit, export_metadata
from xlsr_jax.downstream.vocabulary import (Vocabulary, VocabularyError, build_vocabulary,
                                            normalize_text)


class AsrTask(Task):
  """label_info: the Vocabulary (saved as vocab.json beside the exported model)."""

  drop_longer = True  # a transcript cannot be cropped with its audio
  eval_fields = ("labels", "label_valid")

  def check_config(self, config: Config) -> None:
    check_finetune_mode(config)

  def build(self, config: Config, loaded, encoder_config, train_index):
    loaded_parts: dict[str, Any] = {"wav2vec2": loaded.params} if loaded.params else {}
    if config.asr.vocabulary:
      vocab = Vocabulary.load(config.asr.vocabulary)
    elif loaded.ctc_head is not None and loaded.vocabulary is not None:
      vocab = loaded.vocabulary
    else:
      vocab = build_vocabulary(train_index.transcripts, lowercase=config.asr.lowercase)
    if loaded.ctc_head is not None:
      vocab.check_head(int(loaded.ctc_head["kernel"].shape[-1]), loaded.path)
      loaded_parts["lm_head"] = loaded.ctc_head
    model = heads.Wav2Vec2ForCTC(encoder_config, vocab.size, config.finetune.final_dropout)
    labeler = CtcLabeler(vocabulary=vocab, max_label_length=config.asr.max_label_length)
    return model, loaded_parts, labeler, vocab

  def check_data(self, config: Config, data, label_info, labeler) -> None:
    check_some_fit(config, data.train_index)
    check_ctc_labels(config, data, labeler)

  def loss(self, out, batch, config):
    return ctc_task_loss(out, batch)

  def eval_step(self, tuner, state, batch):
    return ctc_eval_step(tuner, state, batch)

  def score(self, outputs, index, label_info, config, eval_start):
    hyps = ctc_hypotheses(outputs, label_info, config)
    refs = [normalize_text(t, label_info.lowercase) for t in index.transcripts]
    results = metrics.asr_metrics(refs, hyps, index.languages)
    results["examples"] = [{"language": l, "reference": r, "hypothesis": h}
                           for l, r, h in list(zip(index.languages, refs, hyps))[:20]]
    return results, {}

  def export(self, export_dir, params, model, config, label_info) -> None:
    model_files.save_model(export_dir, params, model.config, export_metadata(config))
    label_info.save(export_dir)


def check_finetune_mode(config: Config) -> None:
  """The head trains with the encoder (ASR, speech translation): finetune.mode=finetune."""
  if config.finetune.mode == "probe":
    raise ConfigError(f"task={config.task} trains its head with the encoder: finetune.mode must "
                      f"be 'finetune'")


def check_ctc_labels(config: Config, data, labeler) -> None:
  """The label-length check of both splits (`check_label_lengths`): the training utterances
  within data.max_sample_size, the whole test split (it is scored whatever its length)."""
  check_label_lengths(labeler, data.train_index, "train", max_samples=config.data.max_sample_size)
  check_label_lengths(labeler, data.test_index, "test")


def check_label_lengths(labeler: CtcLabeler, index, split: str,
                        max_samples: int | None = None) -> None:
  """TaskError naming the longest transcript (and how many) whose CTC labels exceed the
  labeler's max_label_length; with max_samples only utterances training keeps are checked."""
  limit = labeler.max_label_length
  over, longest = 0, (0, "")
  for text, language, samples in zip(index.transcripts, index.languages, index.num_samples):
    if max_samples is not None and samples > max_samples:
      continue
    try:
      length = labeler.label_length(text, language)
    except VocabularyError as e:
      raise TaskError(f"{split} split: {e}") from e
    if length > limit:
      over += 1
      longest = max(longest, (length, text))
  if over:
    raise TaskError(f"{over} {split} transcript(s) need more than asr.max_label_length={limit} "
                    f"CTC labels (the longest {longest[0]}: {longest[1][:60]!r}...); set "
                    f"--config.asr.max_label_length={longest[0]} or more")


def ctc_task_loss(out: dict, batch: dict) -> tuple[jax.Array, dict]:
  """CTC summed per utterance, averaged over the batch's real examples (no extra metrics)."""
  weight = batch["example_valid"].astype(jnp.float32)
  n = jnp.maximum(jnp.sum(weight), 1.0)
  valid = out["frame_valid"]
  if valid is None:
    valid = jnp.ones(out["logits"].shape[:2], bool)
  per = ctc.ctc_loss(out["logits"], valid, batch["labels"], batch["label_valid"])
  return jnp.sum(per * weight) / n, {}


def ctc_eval_step(tuner, state, batch: dict) -> dict:
  """logits float32 [batch, frames, vocab] and frame_valid bool [batch, frames]."""
  out = tuner.forward(state.params, batch, None, deterministic=True)
  valid = out["frame_valid"]
  return {"logits": out["logits"],
          "frame_valid": jnp.ones(out["logits"].shape[:2], bool) if valid is None else valid}


def ctc_hypotheses(outputs: list[tuple[dict, dict]], vocab: Vocabulary, config: Config
                   ) -> list[str]:
  """The decoded text of every utterance: greedy, or with asr.beam_width > 0 a beam search
  (with asr.kenlm_path's language model if set)."""
  decoder = None
  if config.asr.beam_width > 0:
    decoder = ctc.BeamSearchDecoder(vocab, beam_width=config.asr.beam_width,
                                    kenlm_path=config.asr.kenlm_path or None,
                                    alpha=config.asr.lm_alpha, beta=config.asr.lm_beta)
  hyps = []
  for out, _ in outputs:
    if decoder is None:
      hyps += [vocab.decode(ids) for ids in ctc.greedy_decode(out["logits"], out["frame_valid"])]
    else:
      log_probs = jax.nn.log_softmax(out["logits"], -1)
      hyps += [decoder.decode(np.asarray(lp)[v]) for lp, v in zip(log_probs, out["frame_valid"])]
  return hyps
