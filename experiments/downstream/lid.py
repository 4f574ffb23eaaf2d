"""Language identification on synthetic_speech (25 languages): a linear probe on frozen features.

  python -m xlsr_jax.evaluate --config=experiments/downstream/lid.py --config.init=DIR --workdir=W

Mean-pooled hidden states of every layer, mixed by learned softmax weights (SUPERB), then a linear
classifier; the encoder is frozen (--config.finetune.mode=finetune fine-tunes it instead, with
the same recipe as ASR). Reports accuracy, error rate and the per-language confusion matrix.
"""
from xlsr_jax.downstream.defaults import get_default_config


def get_config():
  c = get_default_config()
  c.task = "lid"
  c.finetune.mode = "probe"
  c.finetune.num_steps = 600
  c.finetune.mask_prob = 0.0  # no masking for a frozen-encoder probe
  c.finetune.mask_channel_prob = 0.0
  c.finetune.layerdrop = 0.0
  c.optimizer.peak_lr = 2e-3
  c.head.pooling = "mean"
  c.head.layer_weighting = True
  c.data.max_sample_size = 48_000  # 3 s random crops for training; the test split is scored whole
  c.data.batch_size = 16
  return c
