"""Speech translation de, fr -> English on the offline translation corpus, sized for the
pretrained-vs-random proof on 2 CPU cores.

  python -m xlsr_jax.evaluate --config=experiments/downstream/ast_de_fr.py --config.init=DIR --workdir=W

The ast.py recipe with CPU-scale changes, none of them the paper's:
  * corpus `synthetic_speech/translation` (built on first use, ~1 min): 40 minutes per language of
    one-sentence clips (CoVoST 2 is Common Voice sentences), seed 1, so neither its texts nor its
    speakers are the default corpus the demo pretrains on; two languages (more steps per language).
  * joint CTC/attention, translation.ctc_weight 0.3 (ESPnet-ST's usual weight): with cross-entropy
    alone the tiny randomly initialised decoder stays on its language-model plateau for 3,000+
    steps whatever the encoder (train nll ~2.5 at lr 1e-3 and 3e-3; README "Speech translation").
    The paper's decoder starts from mBART-50 instead.
  * peak lr 2e-3 (asr_en.py's), tri-stage 10/60/30, 4,000 steps, greedy decoding up to 48 tokens
    (the targets are at most 12 words).
"""
import os

from xlsr_jax.config_loading import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ast.py"))
  c.data.corpus = "synthetic_speech/translation"
  c.data.build_if_missing = True
  c.data.languages = ["de", "fr"]
  c.data.max_sample_size = 100_000  # 6.25 s: the corpus's longest clip is 6.1 s
  c.translation.ctc_weight = 0.3
  c.optimizer.peak_lr = 2e-3
  c.optimizer.phase_ratio = (0.1, 0.6, 0.3)
  c.finetune.num_steps = 4000
  c.translation.beam_width = 0
  c.translation.max_decode_length = 48
  return c
