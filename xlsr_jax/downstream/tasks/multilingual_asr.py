"""ML-SUPERB (task=ml_superb): multilingual CTC ASR + LID on a frozen encoder, trained on a
labelled budget per language; CER per language, its macro average and worst language, and LID
accuracy from the language token in front of each hypothesis. The protocol, model and scoring
are in `downstream.ml_superb`; the CTC loss, eval step and decoding are ASR's (`tasks.asr`).
"""
from __future__ import annotations

from xlsr_jax.checkpoints import model_files
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.downstream import ml_superb
from xlsr_jax.downstream.tasks.asr import (check_ctc_labels, ctc_eval_step, ctc_hypotheses,
                                           ctc_task_loss)
from xlsr_jax.downstream.tasks.base import Config, Task, export_metadata


class MlSuperbTask(Task):
  """label_info: ml_superb.TaskInfo (vocabulary, language tokens, the budget's utterances and
  seconds per language)."""

  drop_longer = True
  eval_fields = ("labels", "label_valid")

  def check_config(self, config: Config) -> None:
    if config.finetune.mode != "probe":
      raise ConfigError("task=ml_superb trains a downstream model on the frozen encoder: "
                        "finetune.mode must be 'probe'")

  def build(self, config: Config, loaded, encoder_config, train_index):
    loaded_parts = {"wav2vec2": loaded.params} if loaded.params else {}
    m = config.ml_superb
    keep_ids, seconds = ml_superb.budget_subset(train_index, 60.0 * m.budget_minutes,
                                                seed=config.train.seed,
                                                max_seconds=m.max_utterance_seconds)
    chosen = set(keep_ids)
    tokens = ml_superb.language_tokens(sorted(set(train_index.languages))) if m.lid else {}
    vocab = ml_superb.build_lid_vocabulary(
        [t for i, t in zip(train_index.ids, train_index.transcripts) if i in chosen], tokens)
    model = ml_superb.Wav2Vec2ForMLSuperb(
        encoder_config, vocab.size, m.projection_dim, m.hidden_size, m.num_heads, m.ffn_size,
        m.num_layers, m.dropout, m.subsampling)
    labeler = ml_superb.MLSuperbLabeler(vocabulary=vocab,
                                        max_label_length=config.asr.max_label_length,
                                        lid_tokens=tuple(tokens.items()))
    return model, loaded_parts, labeler, ml_superb.TaskInfo(vocab, tokens, keep_ids, seconds)

  def check_data(self, config: Config, data, label_info, labeler) -> None:
    """The label lengths, and a line on the budget (languages under 90% of it named)."""
    check_ctc_labels(config, data, labeler)
    budget = 60.0 * config.ml_superb.budget_minutes
    short = {l: s for l, s in label_info.seconds.items() if s < 0.9 * budget}
    listing = ", ".join(f"{l} {s / 60:.1f} min" for l, s in sorted(short.items())[:10])
    print(f"ml_superb: {len(label_info.keep_ids)} training utterances, budget "
          f"{config.ml_superb.budget_minutes:g} min per language "
          f"({sum(label_info.seconds.values()) / 60:.1f} min in all); "
          f"{len(short)} language(s) have under 90% of it: {listing}", flush=True)

  def keep_ids(self, label_info):
    return label_info.keep_ids

  def loss(self, out, batch, config):
    return ctc_task_loss(out, batch)

  def eval_step(self, tuner, state, batch):
    return ctc_eval_step(tuner, state, batch)

  def score(self, outputs, index, label_info, config, eval_start):
    hyps = ctc_hypotheses(outputs, label_info.vocab, config)
    results = ml_superb.score(hyps, index.transcripts, index.languages, label_info.vocab,
                              label_info.lid_tokens)
    results["budget_seconds"] = label_info.seconds
    return results, {}

  def export(self, export_dir, params, model, config, label_info) -> None:
    model_files.save_model(export_dir, params, model.config,
                           export_metadata(config, lid_tokens=label_info.lid_tokens))
    label_info.vocab.save(export_dir)
