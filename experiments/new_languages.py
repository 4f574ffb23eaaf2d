"""New languages, stage 2: continue stage 1's model on the 5 held-out languages, replaying the 20.

  python -m xlsr_jax.main --config=experiments/new_languages.py --workdir=W/replay \
      --config.train.init_from=W/base/export/orbax
  python -m xlsr_jax.main --config=experiments/new_languages.py --workdir=W/no_replay \
      --config.train.init_from=W/base/export/orbax --config.data.replay_fraction=0

train.init_from loads the stage-1 export (quantizer and projections included) with a fresh optimizer
and schedule. data.replay_fraction of the utterances come from the 20 original languages
(data.replay_sources), n^alpha-balanced among themselves, the rest from the 5 new ones, balanced
the same way; 0 trains on the new languages only. All 25 are scored one by one at every
evaluation (language_metrics.png / .json in the workdir): gains on new, forgetting on old.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "new_languages_base", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "new_languages_base.py"))
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)


def get_config():
  c = base.get_config()
  c.train.init_from = ""  # set on the command line: stage 1's export (W/base/export/orbax)
  c.train.num_steps = 300
  c.train.eval_every = 100
  c.optimizer.peak_lr = 1e-3  # half of stage 1's: continue, do not restart
  c.optimizer.warmup_steps = 20
  c.data.sources = [[base.CORPUS, base.NEW]]
  c.data.replay_sources = [[base.CORPUS, base.OLD]]
  c.data.replay_fraction = 0.25
  c.data.eval_language_sources = []  # sources + replay sources: all 25 languages, each alone
  return c
