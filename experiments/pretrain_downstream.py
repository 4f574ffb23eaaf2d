"""The demo recipe run 5x longer: the pretrained encoder of the downstream proof (README, issue 7).

About 10-25 minutes on 2 CPU cores; its export is compared with the same architecture at random
initialisation by experiments/downstream/{lid,sid,asr}.py.
  python -m xlsr_jax.main --config=experiments/pretrain_downstream.py --workdir=workdir/pretrain
"""
import os

from xlsr_jax.config_loading import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  c.optimizer.warmup_steps = 200
  c.train.num_steps = 3000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
