"""The transfer benchmark's pretraining (benchmarks/transfer.py): the demo recipe on synthetic_speech's
20 seen languages (experiments/new_languages_base.py's split), 5 held out for the probes.

  python -m xlsr_jax.main --config=experiments/transfer.py --workdir=W/wav2vec2_s0
  python -m xlsr_jax.main --config=experiments/transfer.py --config.objective.name=best_rq --workdir=W/best_rq_s0
  python -m xlsr_jax.main --config=experiments/transfer.py --config.objective.name=best_rq \
      --config.model.frontend=fbank --workdir=W/best_rq_fbank_s0

Every objective gets the demo's encoder, buckets, masks (0.65 x 10 frames: ~half of each row),
optimizer and batch; benchmarks/transfer.py sets num_steps per objective so that each trains for the
same measured compute. BEST-RQ's quantizer here has one book of 1,024 x 16 (the paper's 8,192 rows
would make the 64-wide tiny model's softmax head the largest matmul of its step; 1,024 keeps it
below the encoder's cost) over 80 log-mel bins.
"""
import os

from xlsr_jax.config_loading import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "new_languages_base.py"))
  c.train.num_steps = 400
  c.train.eval_every = 100
  c.train.eval_language_batches = 0
  c.train.checkpoint_every = 100
  c.objective.best_rq.codebook_size = 1024
  return c
