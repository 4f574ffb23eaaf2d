"""The demo recipe run 5x longer: the pretrained encoder of the downstream proof (README, issue 7).

About half an hour on 2 CPU cores; its export is compared with the same architecture at random
initialisation by experiments/downstream/{lid,sid,asr}.py.
  python -m xlsr_jax.main --config=experiments/pretrain_downstream.py --workdir=workdir/pretrain
"""
import importlib.util
import os


def _demo_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _demo_config()
  c.optimizer.warmup_steps = 200
  c.train.num_steps = 3000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
