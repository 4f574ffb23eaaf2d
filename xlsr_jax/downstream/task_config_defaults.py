"""The complete default downstream config: every key an experiments/downstream/*.py may set.

Fine-tuning values follow fairseq's XLS-R fine-tuning config (shared/spec/xlsr.md, "Training
recipe"): Adam (0.9, 0.98), tri-stage schedule 10/40/50 % with final scale 0.05, feature encoder
frozen, Transformer frozen for the first N updates (10k in the recipe), mask_prob 0.75 (length
10), channel masking 0.25 x 64, layerdrop 0.1. The step counts here are CPU-demo sized.
"""
from __future__ import annotations

import ml_collections

from data_pipelines import DEFAULT_DATA_DIR
from xlsr_jax.sharding.mesh import DEFAULT_RULES


def get_default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # A name in downstream.tasks.TASKS: asr (CTC, WER/CER), lid (language id), sid (speaker id),
  # ast (X -> En, BLEU), ml_superb (frozen encoder, CTC ASR + LID on a labelled budget per language)
  c.task = "asr"
  # The encoder: an export dir, a Hugging Face wav2vec2 dir, a fairseq .pt, or "random" (the
  # architecture of `model` at random initialisation: the baseline pretraining must beat).
  c.init = "random"
  c.init_seed = 0  # seed of the random initialisation (encoder with init=random, and heads)

  # Architecture for init=random, and field overrides applied to any loaded encoder's config
  # (e.g. dropouts for fine-tuning; dtype); preset names as in xlsr_jax.models.config.
  c.model = ml_collections.ConfigDict({"preset": "tiny"})

  c.finetune = ml_collections.ConfigDict(dict(
      mode="finetune",  # "finetune" (whole model except the frozen parts) or "probe" (frozen encoder)
      num_steps=2000,
      freeze_feature_encoder=True,
      freeze_transformer_steps=500,  # fairseq freeze_finetune_updates (10k in the XLS-R recipe)
      mask_prob=0.75, mask_length=10, mask_min_masks=2,  # time masking (mask_emb), fairseq finetune
      mask_channel_prob=0.25, mask_channel_length=64,  # channel masking (zeros)
      layerdrop=0.1,
      final_dropout=0.0,  # dropout before the CTC head
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=5e-5, phase_ratio=(0.1, 0.4, 0.5), init_lr_scale=0.01, final_lr_scale=0.05,
      b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
  ))
  # Utterance classification head (LID, SID).
  c.head = ml_collections.ConfigDict(dict(
      pooling="mean",  # "mean" or "mean_std" over non-padded frames
      layer_weighting=True,  # SUPERB learned softmax-weighted sum over the layers
      projection_dim=0,  # a projection before the classifier (HF classifier_proj_size); 0 = none
  ))
  # LID / SID with finetune.mode=probe: how the linear probe on the frozen encoder is trained.
  c.probe = ml_collections.ConfigDict(dict(
      # "lbfgs": pooled per-layer features of whole utterances computed once (cached in
      # W/features), standardised with the training statistics, and a full-batch L2 logistic
      # regression (downstream.probes) trained to convergence, its strength chosen on the
      # validation split. "sgd": the head trained by Adam on random crops for finetune.num_steps
      # (head.* settings; the encoder runs every step).
      solver="lbfgs",
      layers="concat",  # "concat" (every layer side by side), "weighted" (SUPERB learned softmax
                        # layer weights, fitted jointly), "last" (the encoder output only)
      l2_grid=[1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0],  # strengths (per mean loss;
                                # scikit-learn C = 1 / (l2 * n)) tried on validation
      select_metric="accuracy",  # accuracy | balanced_accuracy | macro_f1 | log_loss
      class_weight="none",  # "balanced": weights n / (classes * n_class), scikit-learn's
      validation_split="validation",  # "" = hold out holdout_fraction of train (per class)
      holdout_fraction=0.1,
      max_iter=2000, tol=1e-6,  # L-BFGS iterations, and the largest gradient entry to stop at
      cache_features=True,
      # The same probe on hand-made features beside the encoder's (downstream/handmade.py):
      # FBANK (80 log-mel, SUPERB's baseline) and MFCC (13 + deltas), mean + std pooled.
      handmade_baselines=True,
  ))
  # ML-SUPERB (task=ml_superb; values and their sources in experiments/downstream/ml_superb.py).
  c.ml_superb = ml_collections.ConfigDict(dict(
      budget_minutes=10.0,  # labelled training audio per language: 10 (10 min) or 60 (1 h)
      max_utterance_seconds=20.0,  # longer training utterances are skipped
      lid=True,  # joint ASR + LID: a language token before every transcript
      projection_dim=80, hidden_size=256, num_heads=8, ffn_size=1024, num_layers=2,
      dropout=0.1, subsampling="conv2d2",  # "conv2d2" (recipe) or "none"
  ))
  # CTC ASR.
  c.asr = ml_collections.ConfigDict(dict(
      vocabulary="",  # a vocab.json to use ("" = the init's vocab.json if it has a CTC head,
                      # else built from the training transcripts)
      lowercase=True,
      max_label_length=160,  # tokens; longer transcripts are an error
      beam_width=0,  # 0 = greedy decoding; > 0 = beam search (pyctcdecode if installed)
      kenlm_path="",  # ARPA / binary KenLM model for beam search ("" = none)
      lm_alpha=0.5, lm_beta=1.0,
  ))
  # Speech translation (task=ast): adapter, decoder, tokenizer, loss and decoding.
  c.translation = ml_collections.ConfigDict(dict(
      decoder_preset="tiny",  # models.text_decoder.DECODER_PRESETS: tiny, mbart_large
      decoder_dropout=-1.0,  # < 0: the preset's
      decoder_init="",  # a decoder dir from `python -m xlsr_jax.convert --from=mbart` ("" = random)
      tokenizer="",  # a sentencepiece model ("" = the init's, else trained on the training targets)
      vocab_size=256,  # upper bound for a sentencepiece model trained here
      add_adapter=True, num_adapter_layers=3, adapter_kernel_size=3, adapter_stride=2,
      output_hidden_size=0,  # adapter width (0 = the encoder's)
      label_smoothing=0.1,
      # Joint CTC/attention (ESPnet-ST, fairseq S2T): loss = (1 - w) * cross-entropy + w * CTC of
      # the source transcript's characters from the encoder's frames (a training-only head that
      # exports leave out). 0 = cross-entropy alone, the paper's recipe.
      ctc_weight=0.0,
      ctc_max_source_length=256,  # characters; training utterances with longer transcripts are dropped
      max_target_length=96,  # target pieces + </s>; longer training targets are dropped
      beam_width=5,  # 0 = greedy
      length_penalty=1.0,
      max_decode_length=96,
      forced_bos_token_id=-1,  # mBART-50: the id of en_XX (the target language code); -1 = none
      include_english=False,  # X -> En: English utterances are left out unless set
      num_examples=25,  # example translations in the report
  ))
  c.data = ml_collections.ConfigDict(dict(
      data_dir=DEFAULT_DATA_DIR,
      corpus="synthetic_speech/default",
      languages=None,  # None = every language of the corpus
      train_split="train", eval_split="test",
      max_sample_size=112_000,  # training crop (ASR: longer utterances are dropped instead)
      eval_max_sample_size=0,  # 0 = the longest test utterance (rounded up to 0.5 s)
      batch_size=8, eval_batch_size=16,
      normalize=True,
      build_if_missing=False,
  ))
  c.train = ml_collections.ConfigDict(dict(
      seed=0, log_every=50, checkpoint_every=500, keep_checkpoints=2,
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
  c.sharding = ml_collections.ConfigDict(dict(
      logical_axis_rules=[[name, list(axes) if isinstance(axes, tuple) else axes]
                          for name, axes in DEFAULT_RULES],
  ))
  return c
