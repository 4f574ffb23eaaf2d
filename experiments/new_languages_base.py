"""New languages, stage 1: the demo model pretrained on 20 of synthetic_speech's 25 languages.

  python -m xlsr_jax.main --config=experiments/new_languages_base.py --workdir=W/base

Every evaluation also scores each of the 25 languages alone (train.eval_language_batches), held-out
ones included: their loss before continued pretraining. Stage 2 (experiments/new_languages.py)
continues this model on the 5 held-out languages, with or without replay of the 20.
"""
from xlsr_jax.training.defaults import get_default_config

CORPUS = "synthetic_speech/default"
# Held out: one from each of five families and scripts, spread over the corpus's size ranks.
NEW = ["fr", "ru", "tr", "hi", "ko"]
OLD = ["en", "de", "es", "it", "pt", "nl", "pl", "uk", "cs", "el", "fi", "hu", "ar", "id", "vi",
       "cmn", "ja", "bn", "ta", "sw"]


def get_config():
  c = get_default_config()
  c.model.preset = "tiny"
  c.objective.num_negatives = 20
  c.objective.gumbel_end = 0.5
  c.objective.gumbel_decay = 0.995
  c.optimizer.peak_lr = 2e-3
  c.optimizer.warmup_steps = 50
  c.train.num_steps = 800
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 2
  c.train.eval_language_batches = 2
  c.train.checkpoint_every = 100
  c.data.data_dir = "./data/tensorflow_datasets"
  c.data.sources = [[CORPUS, OLD]]
  c.data.eval_language_sources = [[CORPUS, OLD], [CORPUS, NEW]]
  c.data.bucket_seconds = [2.0, 3.0, 5.0, 8.0]  # as experiments/demo.py: 24 s of audio per step
  c.data.bucket_mode = "crop"
  c.data.max_sample_size = 128_000
  c.data.min_sample_size = 32_000
  c.data.batch_seconds = 24.0
  c.data.build_if_missing = True
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c
