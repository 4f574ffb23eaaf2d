"""Speaker identification on synthetic_speech (its voices: 4 per language, 100 speakers), as a
linear probe on frozen features (VoxCeleb1 identification protocol: accuracy over the test split's
utterances of the training speakers). For VoxCeleb1 itself set
--config.data.corpus=voxceleb/all once it is built (data_pipelines/voxceleb).

  python -m xlsr_jax.evaluate --config=experiments/downstream/sid.py --config.init=DIR --workdir=W

The probe is lid.py's (L-BFGS logistic regression on cached, standardised per-layer statistics,
L2 chosen on validation; probe.solver=sgd for the earlier Adam probe) with mean+std pooling.
"""
from xlsr_jax.downstream.task_config_defaults import get_default_config


def get_config():
  c = get_default_config()
  c.task = "sid"
  c.finetune.mode = "probe"
  c.probe.solver = "lbfgs"
  c.probe.layers = "concat"
  c.head.pooling = "mean_std"  # speaker traits live in the variation over time as well
  # The SGD probe (probe.solver=sgd) and fine-tuning:
  c.finetune.num_steps = 800
  c.finetune.mask_prob = 0.0
  c.finetune.mask_channel_prob = 0.0
  c.finetune.layerdrop = 0.0
  c.optimizer.peak_lr = 2e-3
  c.head.layer_weighting = True
  c.data.max_sample_size = 48_000
  c.data.batch_size = 16
  return c
