"""Continued pretraining of the Omnilingual ASR 7B wav2vec 2.0 encoder (128 layers, 2048 dim).

Starts from the released omniASR-W2V-7B weights (fairseq2 format: `python -m xlsr_jax.convert
--from=fairseq2 ...`, then the pretraining init option) and continues the wav2vec 2.0 objective on
new audio. Values marked (fairseq2) are read from fairseq2's `large_lv60k` arch and
omnilingual_asr/models/wav2vec2_ssl/config.py, from which the 7B arch derives; (unconfirmed) are
our choices for a continued run and are kept here so they can be changed.
"""
from xlsr_jax.training.config_defaults import get_default_config


def get_config():
  c = get_default_config()
  c.model.preset = "omni_7b"  # dropouts and feature_grad_mult 0.1 as the fairseq2 arch sets them
  c.model.dtype = "bfloat16"  # bf16 compute, float32 master weights
  # Full remat per layer: with the mesh below and 20 crops of 20 s per chip, the AOT plan for
  # v5p-64 gives 30.7 of 95 GiB per chip and an estimated MFU of 53.7% (README, TPU capacity plan;
  # benchmarks/results/plan_omni_7b_v5p-64.json).
  c.model.remat_policy = "full"
  c.objective.mask_prob = 0.69  # max_temporal_mask_prob 0.69 (fairseq2 default, kept by these archs)
  c.objective.gumbel_start, c.objective.gumbel_end = 2.0, 0.1  # (2, 0.1, 0.999995) (fairseq2)
  c.objective.feature_penalty_weight = 0.0
  # A continued run: a fresh optimizer with a lower peak and a short warmup (unconfirmed).
  c.optimizer.peak_lr = 5e-5
  c.optimizer.warmup_steps = 2_000
  c.train.num_steps = 50_000
  c.data.max_sample_size = 320_000  # 20 s crops
  c.data.min_sample_size = 32_000  # drop utterances under 2 s
  c.data.batch_seconds = 1600.0 * 8  # 640 crops of 20 s per update (as experiments/xlsr_2b.py)
  # c.data.sources: the audio to continue on (TFDS names, as experiments/xlsr_2b.py lists them);
  # data.replay_sources / replay_fraction keep a share of earlier languages (new-languages runs).
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  return c
