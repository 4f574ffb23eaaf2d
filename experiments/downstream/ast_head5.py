"""Speech translation into English from the five largest non-English synthetic_speech languages
(de, fr, es, it, pt), sized for the pretrained-vs-random proof on 2 CPU cores.

  python -m xlsr_jax.evaluate --config=experiments/downstream/ast_head5.py --config.init=DIR --workdir=W

The ast.py recipe with CPU-scale changes (the asr_en.py approach): five head languages instead of
24 scripts (more utterances per language for the tiny model to learn from), 600 steps, greedy
decoding up to 48 tokens (the targets are at most 16 words).
"""
import os

from xlsr_jax.config_loading import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ast.py"))
  c.data.languages = ["de", "fr", "es", "it", "pt"]
  c.finetune.num_steps = 600
  c.translation.beam_width = 0
  c.translation.max_decode_length = 48
  return c
