"""The complete default pretraining config: every key an experiment may set, with its meaning.

Experiments in `experiments/` start from `get_default_config()` and change values; any key not
present here is rejected at start-up (see xlsr_jax.config_loading).
"""
from __future__ import annotations

import ml_collections

from data_pipelines import DEFAULT_DATA_DIR
from xlsr_jax.sharding.mesh import DEFAULT_RULES


def get_default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # Model: a preset (tiny, base, xlsr_300m, xlsr_1b, xlsr_2b) plus any Wav2Vec2Config field.
  c.model = ml_collections.ConfigDict({"preset": "tiny"})

  # Objective: name "wav2vec2" (fairseq wav2vec 2.0 pretraining: contrastive + Gumbel quantizer)
  # or "best_rq" (cross-entropy on frozen random-projection codes of the log-mel, objectives/
  # best_rq.py). Both use the span mask below; the Gumbel / negatives keys are wav2vec2's only.
  c.objective = ml_collections.ConfigDict(dict(
      name="wav2vec2",
      # require_same_masks: trim every row to the batch's fewest masked frames (fairseq, for
      # equal counts on GPU); off, each row keeps its own mask (the static bound M with a per-row
      # valid mask makes equal counts unnecessary), so mixed lengths mask what the recipe means.
      mask_prob=0.65, mask_length=10, min_masks=2, require_same_masks=False,
      num_negatives=100, logit_temperature=0.1, diversity_weight=0.1,
      feature_penalty_weight=0.0,
      gumbel_start=2.0, gumbel_end=0.1, gumbel_decay=0.999995,  # tau = max(start*decay^step, end)
      # BEST-RQ's quantizer (paper and NeMo defaults: one book of 8192 x 16 over 80 log-mel bins,
      # two 10 ms frames stacked per 20 ms encoder frame); seed draws the frozen projection and
      # codebook, identical on every host and stored in the checkpoint.
      best_rq=ml_collections.ConfigDict(dict(
          num_codebooks=1, codebook_size=8192, codebook_dim=16, num_mel_bins=80, seed=0)),
  ))

  # Optimizer: AdamW with linear warmup then linear decay to 0 at the last step.
  c.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=3e-4, warmup_steps=32_000, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01,
      grad_clip_norm=0.0,  # 0 = no clipping (fairseq default for pretraining)
  ))

  # Training loop.
  c.train = ml_collections.ConfigDict(dict(
      num_steps=400_000, grad_accum_steps=1, seed=0,
      log_every=100, eval_every=5_000, eval_batches=10,
      checkpoint_every=5_000, keep_checkpoints=3,
      peak_tflops_per_device=0.0,  # 0 = look up the device kind (for MFU); set for unknown devices
      max_nonfinite_steps=100,  # stop when this many consecutive steps had a NaN/Inf loss
      # JAX persistent compilation cache (local path or gs://): a restarted run (crash, preemption)
      # loads the compiled step instead of compiling it again. "" = JAX's own setting
      # (JAX_COMPILATION_CACHE_DIR).
      compilation_cache_dir="",
      # Per-language validation (training/language_metrics.py): at every eval also this many batches
      # of each language alone (data.eval_language_sources); 0 = off. Plot at the end of the run.
      eval_language_batches=0,
      # Continued pretraining (training/init_from.py): a new run (no checkpoint in the workdir yet)
      # starts from these weights, quantizer and projections included, with a fresh optimizer and
      # schedule: an xlsr_jax export, a Hugging Face wav2vec2 directory or a fairseq .pt. "" = random.
      # A resumed run always restores its own checkpoints instead.
      init_from="",
      # Regular expressions searched in "/"-joined parameter paths ("quantizer/codevectors"); the
      # matching parameters keep the model's random initialisation, e.g. ["^quantizer/"].
      init_exclude=[],
  ))

  # Input pipeline (data_pipelines.input_pipeline.PipelineConfig) and batch size in seconds.
  c.data = ml_collections.ConfigDict(dict(
      data_dir=DEFAULT_DATA_DIR,
      sources=[["synthetic_speech/default", None]],  # [TFDS name/config, languages or None = all]
      split="train", eval_split="validation",
      alpha=0.5, max_sample_size=320_000, min_sample_size=32_000, normalize=True,
      batch_seconds=1600.0,  # global batch = batch_seconds * 16000 / max_sample_size utterances
      shuffle_files=True, interleave_cycle_length=4, prefetch_batches=2,
      build_if_missing=False,  # build synthetic_speech when it is not in data_dir
      # A resume whose batch stream differs from the checkpoint's (another batch_seconds, bucket
      # plan, sources, alpha, seed, ...) is refused; true: accept the new plan and restart the input
      # stream from its beginning (the saved position belongs to the old stream), with a warning.
      restart_input_stream=False,
      # Duration buckets (data_pipelines/buckets.py): crop lengths in seconds, one bucket per step,
      # rows per bucket keep batch_seconds of audio. [] = every utterance cut or padded to
      # max_sample_size. bucket_mode "crop": an utterance goes to the longest bucket it fills and
      # is cropped to it; "pad": to the shortest it fits in, padded up.
      bucket_seconds=[], bucket_mode="crop",
      # Continued pretraining on new languages: replay_sources (e.g. the original languages) get
      # replay_fraction of the utterances, n^alpha-balanced among themselves; `sources` the rest
      # (replay_fraction 0: replay_sources are not trained on, only scored per language).
      replay_sources=[], replay_fraction=0.0,
      # Languages scored one by one when train.eval_language_batches > 0 ([] = sources + replay).
      eval_language_sources=[],
  ))

  # Device mesh (product = number of devices; one axis may be -1) and sharding rules.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
  c.sharding = ml_collections.ConfigDict(dict(
      logical_axis_rules=[[name, list(axes) if isinstance(axes, tuple) else axes]
                          for name, axes in DEFAULT_RULES],
  ))

  # Multi-host: jax.distributed.initialize arguments (empty = from the environment / TPU metadata).
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1,
  ))
  return c
