"""Start-up checks of a downstream config: the ranges and relations of `downstream/task_config_defaults.py`.

The same row constructors as pretraining (`xlsr_jax.training.config_checks`);
`xlsr_jax.downstream.evaluate` runs `validate` right after loading the config, before data,
models or the workdir are touched.
The encoder's own fields are checked when it is loaded (its config comes from the checkpoint).
"""
from __future__ import annotations

import ml_collections

from xlsr_jax.training.config_checks import (Rule, at_least, check, in_range, integer_at_least,
                                          one_of, positive, relation)

RULES: list[Rule] = [
    integer_at_least("init_seed", 0),
    one_of("finetune.mode", ("finetune", "probe")),
    integer_at_least("finetune.num_steps", 1),
    integer_at_least("finetune.freeze_transformer_steps", 0),
    in_range("finetune.mask_prob", 0.0, 1.0),
    integer_at_least("finetune.mask_length", 1),
    integer_at_least("finetune.mask_min_masks", 0),
    in_range("finetune.mask_channel_prob", 0.0, 1.0),
    integer_at_least("finetune.mask_channel_length", 1),
    in_range("finetune.layerdrop", 0.0, 1.0, high_open=True),
    in_range("finetune.final_dropout", 0.0, 1.0, high_open=True),
    positive("optimizer.peak_lr"),
    Rule(("optimizer.phase_ratio",), lambda v: len(v) == 3 and all(x >= 0 for x in v)
         and abs(sum(v) - 1.0) < 1e-6, "three non-negative fractions (warmup, hold, decay) summing to 1"),
    in_range("optimizer.init_lr_scale", 0.0, 1.0),
    in_range("optimizer.final_lr_scale", 0.0, 1.0),
    in_range("optimizer.b1", 0.0, 1.0, high_open=True),
    in_range("optimizer.b2", 0.0, 1.0, high_open=True),
    positive("optimizer.eps"),
    at_least("optimizer.weight_decay", 0.0),
    at_least("optimizer.grad_clip_norm", 0.0),
    one_of("head.pooling", ("mean", "mean_std")),
    integer_at_least("head.projection_dim", 0),
    integer_at_least("asr.max_label_length", 1),
    integer_at_least("asr.beam_width", 0),
    in_range("translation.label_smoothing", 0.0, 1.0, high_open=True),
    in_range("translation.ctc_weight", 0.0, 1.0, high_open=True),
    integer_at_least("translation.ctc_max_source_length", 1),
    integer_at_least("data.max_sample_size", 400),
    integer_at_least("data.eval_max_sample_size", 0),
    integer_at_least("data.batch_size", 1),
    integer_at_least("data.eval_batch_size", 1),
    integer_at_least("train.seed", 0),
    integer_at_least("train.log_every", 1),
    integer_at_least("train.checkpoint_every", 1),
    integer_at_least("train.keep_checkpoints", 1),
    relation(("data.eval_max_sample_size", "data.max_sample_size"), lambda e, _: e == 0 or e >= 400,
             "0 (the longest test utterance) or at least the encoder's 400-sample receptive field"),
]


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line naming the key) for the first row `config` fails."""
  check(config, RULES, model=object())
