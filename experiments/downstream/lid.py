"""Language identification on synthetic_speech (25 languages): a linear probe on frozen features.

  python -m xlsr_jax.evaluate --config=experiments/downstream/lid.py --config.init=DIR --workdir=W

Default (probe.solver=lbfgs): mean-pooled hidden states of every layer of whole utterances,
computed once (cached in W/features), standardised with the training statistics and concatenated
(probe.layers=concat; `weighted` learns SUPERB softmax layer weights instead), then an L2
logistic regression trained to convergence by full-batch L-BFGS, its strength chosen on the
validation split (probe.l2_grid, probe.select_metric); probe.class_weight=balanced weights the
classes equally. --config.probe.solver=sgd trains the SUPERB head with Adam on 3 s crops for
finetune.num_steps instead (the earlier probe); --config.finetune.mode=finetune fine-tunes the
encoder with the ASR recipe. Reports accuracy, balanced accuracy and macro-F1 beside the
majority-class and chance baselines, per-language scores and the confusion matrix.
"""
from xlsr_jax.downstream.task_config_defaults import get_default_config


def get_config():
  c = get_default_config()
  c.task = "lid"
  c.finetune.mode = "probe"
  c.probe.solver = "lbfgs"
  c.probe.layers = "concat"
  # The SGD probe (probe.solver=sgd) and fine-tuning:
  c.finetune.num_steps = 600
  c.finetune.mask_prob = 0.0  # no masking for a frozen-encoder probe
  c.finetune.mask_channel_prob = 0.0
  c.finetune.layerdrop = 0.0
  c.optimizer.peak_lr = 2e-3
  c.head.pooling = "mean"
  c.head.layer_weighting = True
  c.data.max_sample_size = 48_000  # SGD: 3 s random training crops; the L-BFGS probe and the
                                   # test split use whole utterances
  c.data.batch_size = 16
  return c
