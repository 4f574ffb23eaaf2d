"""Speech translation X -> English (task=ast): encoder + adapter + text decoder trained with
label-smoothed cross-entropy (optionally beside an auxiliary CTC on the source characters),
decoded by beam search; BLEU and chrF per language pair. The model, targets, tokenizer and
export are in `downstream.translation`.
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.features import language_split_name
from xlsr_jax.downstream import ctc
from xlsr_jax.downstream.task_setup import TaskError
from xlsr_jax.downstream.tasks.asr import check_finetune_mode
from xlsr_jax.downstream.tasks.base import Config, Task, check_some_fit, export_metadata
from xlsr_jax.downstream.translation import decoding
from xlsr_jax.downstream.translation import task as translation
from xlsr_jax.checkpoints import translation_files
from xlsr_jax.models.speech_translation import (SpeechToText, label_smoothed_cross_entropy,
                                                shift_tokens_right)


class TranslationTask(Task):
  """label_info: the sentencepiece Tokenizer of the targets (exported with the model)."""

  drop_longer = True  # a target cannot be cropped with its audio
  eval_fields = ("labels", "label")

  def check_config(self, config: Config) -> None:
    check_finetune_mode(config)

  def split_names(self, config: Config, names: list[str], split: str) -> list[str]:
    """X -> En: the English split is left out unless translation.include_english."""
    if config.translation.include_english:
      return names
    return [n for n in names if n != language_split_name(split, "en")]

  def build(self, config: Config, loaded, encoder_config, train_index):
    try:
      model, loaded_parts, labeler, tokenizer, _ = translation.build(config, loaded, encoder_config,
                                                                     train_index)
    except ValueError as e:
      raise TaskError(str(e)) from e
    return model, loaded_parts, labeler, tokenizer

  def check_data(self, config: Config, data, label_info, labeler) -> None:
    check_some_fit(config, data.train_index)

  def forward_inputs(self, model, batch):
    """The teacher-forced decoder input: the targets shifted right after the start token."""
    dec = model.config.decoder
    return {"decoder_input_ids": shift_tokens_right(batch["labels"], dec.pad_token_id,
                                                    dec.decoder_start_token_id)}

  def loss(self, out, batch, config):
    return translation_loss(out, batch, config.translation.label_smoothing,
                            config.translation.ctc_weight)

  def eval_step(self, tuner, state, batch):
    """{"tokens": int32 [batch, max_decode_length]}: beam search (greedy at beam_width 0)."""
    t, cfg = tuner.config.translation, tuner.model.config
    params = state.params
    with nn.logical_axis_rules(tuner.rules):
      states, valid = tuner.model.apply({"params": params}, batch["waveform"],
                                        batch["padding_mask"], method=SpeechToText.encode)
      if t.beam_width > 0:
        tokens, _ = decoding.beam_search(cfg, params, states, valid, max_length=t.max_decode_length,
                                         beam_width=t.beam_width, length_penalty=t.length_penalty,
                                         forced_bos_token_id=t.forced_bos_token_id)
      else:
        tokens = decoding.greedy_search(cfg, params, states, valid, max_length=t.max_decode_length,
                                        forced_bos_token_id=t.forced_bos_token_id)
    return {"tokens": tokens}

  def score(self, outputs, index, label_info, config, eval_start):
    tokens = np.concatenate([o["tokens"] for o, _ in outputs])
    results = translation.score(tokens, index, label_info, config.translation.num_examples)
    results["decode_seconds"] = time.perf_counter() - eval_start
    return results, {}

  def add_results(self, results, config, data, label_info, labeler, loaded, workdir) -> None:
    """The run's facts, then the training utterances left out for want of a single English
    target."""
    super().add_results(results, config, data, label_info, labeler, loaded, workdir)
    results["train_without_target"] = sum(t is None for t in translation.targets(data.train_index))
    results["train_utterances"] = len(data.train_index)

  def export(self, export_dir, params, model, config, label_info) -> None:
    translation_files.save_model(export_dir, params, model.config, label_info, export_metadata(config))

  def report_sections(self, results, config) -> str:
    return (f"\n## Scoring\n\nsacrebleu corpus BLEU `{results['bleu_signature']}`, chrF "
            f"`{results['chrf_signature']}`; decoding: beam {config.translation.beam_width} "
            f"(0 = greedy), length penalty {config.translation.length_penalty}.\n"
            f"\n## Example translations\n\n"
            f"{translation.examples_markdown(results['examples'])}\n")


def translation_loss(out: dict, batch: dict, label_smoothing: float = 0.0,
                     ctc_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Label-smoothed cross-entropy per target token, with its plain NLL, over the batch's real
  examples; with `ctc_weight` > 0 (1 - w) * that + w * the auxiliary CTC per source character."""
  weight = batch["example_valid"].astype(jnp.float32)
  labels = jnp.where(weight[:, None] > 0, batch["labels"], -100)
  loss, count = label_smoothed_cross_entropy(out["logits"], labels, label_smoothing)
  plain, _ = label_smoothed_cross_entropy(out["logits"], labels, 0.0)
  extra = {"nll": plain, "target_tokens": count.astype(jnp.float32)}
  if ctc_weight > 0:
    per = ctc.ctc_loss(out["ctc_logits"], out["frame_valid"], batch["source_labels"],
                       batch["source_label_valid"])
    chars = jnp.sum(batch["source_label_valid"] * weight[:, None])
    extra["ctc_loss"] = jnp.sum(per * weight) / jnp.maximum(chars, 1.0)
    loss = (1.0 - ctc_weight) * loss + ctc_weight * extra["ctc_loss"]
  return loss, extra
