"""The demo: a tiny XLS-R-shaped model pretrained on the embedded synthetic_speech corpus, on CPU.

A few minutes on 2 CPU cores: builds the corpus if missing, pretrains, checkpoints and exports.
  python -m xlsr_jax.main --config=experiments/demo.py --workdir=/tmp/xlsr_demo
"""
from xlsr_jax.training.config_defaults import get_default_config


def get_config():
  c = get_default_config()
  c.model.preset = "tiny"
  c.objective.num_negatives = 20
  # Spans of 5 frames (100 ms) instead of XLS-R's 10: with per-row masks (the default) the 2-layer,
  # 64-wide model stayed at chance for 240 steps with spans of 10 on the test's tiny corpus; with 5
  # it leaves chance at step ~180 (tests/test_main_demo.py runs this recipe for 400 steps).
  c.objective.mask_length = 5
  c.objective.gumbel_end = 0.5
  c.objective.gumbel_decay = 0.995
  c.optimizer.peak_lr = 2e-3  # 1e-3 stayed at chance for 150 steps; 2e-3 learns from step ~120
  c.optimizer.warmup_steps = 50
  c.train.num_steps = 600
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 2
  c.train.checkpoint_every = 100
  c.train.peak_tflops_per_device = 0.0
  c.data.sources = [["synthetic_speech/default", None]]
  # Duration buckets: each step crops its rows to one of these lengths (an utterance goes to the
  # longest bucket it fills), with 24 s of audio per step: 12 x 2 s, 8 x 3 s, 5 x 5 s or 3 x 8 s.
  c.data.bucket_seconds = [2.0, 3.0, 5.0, 8.0]
  c.data.bucket_mode = "crop"
  c.data.max_sample_size = 128_000  # 8 s: the largest bucket
  c.data.min_sample_size = 32_000  # utterances under 2 s are dropped (and counted)
  c.data.batch_seconds = 24.0
  c.data.build_if_missing = True
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c
