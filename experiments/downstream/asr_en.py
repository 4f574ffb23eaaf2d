"""CTC ASR on synthetic_speech English only, sized for the downstream proof on 2 CPU cores.

  python -m xlsr_jax.evaluate --config=experiments/downstream/asr_en.py --config.init=DIR --workdir=W

The asr.py recipe with three CPU-scale changes, measured to matter for the tiny model: one
language (English, the corpus head: 197 train utterances, 145 of them up to 7 s, and 28 test)
instead of 25 scripts, peak lr 2e-3 and mask_prob 0.4 (with 25 languages, lr 5e-4 and mask 0.75
the tiny model stayed on the all-blank CTC plateau for 1,000 steps, CER 1.0 from random init),
and the Transformer frozen for the first 100 updates.
"""
import os

from xlsr_jax.config_loading import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "asr.py"))
  c.data.languages = ["en"]
  c.optimizer.peak_lr = 2e-3
  c.finetune.mask_prob = 0.4
  c.finetune.freeze_transformer_steps = 100
  c.finetune.num_steps = 1200
  return c
