"""Analytic model FLOPs of one wav2vec 2.0 / XLS-R pretraining step (for MFU and capacity plans).

Only matmuls and convolutions are counted, 2 FLOPs per multiply-add; elementwise work (norms, GELU,
softmax, the loss) is not, as in the usual MFU convention. A training step costs 3x the forward
(backward = 2x forward: gradients for the inputs and for the weights); rematerialisation is not
model work and is not counted (XLA's own count includes it, see xlsr_jax.plan).
"""
from __future__ import annotations

import dataclasses

from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.feature_encoder import conv_lengths, frame_lengths

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)


@dataclasses.dataclass(frozen=True)
class StepSize:
  """What one step processes: `batch` crops of `num_samples` samples, `num_masked` (M) masked frames
  per crop (the static bound the step computes with) and `num_negatives` (K) distractors each."""
  batch: int
  num_samples: int
  num_masked: int
  num_negatives: int


def forward_flops(config: Wav2Vec2Config, size: StepSize, *,
                  similarity_matrix: bool = False) -> dict[str, int]:
  """Forward matmul/conv FLOPs of Wav2Vec2ForPreTraining + contrastive logits, per component.

  Components: feature_encoder, feature_projection, positional_conv, attention_projections (Q, K, V,
  O), attention_scores (QK^T and PV, T^2 each), feed_forward, quantizer (logits + codebook lookup
  on the M masked frames), loss_projections (project_q, project_hid), contrastive_logits.
  The model count of the logits is M x (1 + K) dot products per crop; `similarity_matrix=True`
  counts the M x M similarity matmul that objectives.losses.contrastive_logits runs instead (its M
  positive dot products are an elementwise multiply and sum there), to compare with the program.
  """
  b, m, k = size.batch, size.num_masked, size.num_negatives
  frames = conv_lengths(size.num_samples, config)
  t = frames[-1]
  d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
  conv_out = config.conv_dim[-1]
  final = config.proj_codevector_dim

  encoder, channels = 0, 1
  for out_ch, kernel, length in zip(config.conv_dim, config.conv_kernel, frames):
    encoder += 2 * kernel * channels * out_ch * length
    channels = out_ch
  pos_kernel, groups = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
  # Padding K//2 on both sides gives T + 1 outputs for an even kernel; the last is dropped after.
  pos_frames = t + 2 * (pos_kernel // 2) - pos_kernel + 1
  per_layer_proj = 4 * 2 * t * d * d
  per_layer_scores = 2 * 2 * t * t * d
  per_layer_ffn = 2 * 2 * t * d * f
  codes = config.num_codevectors
  quantizer = 2 * m * conv_out * codes + 2 * m * codes * (config.codevector_dim // config.num_codevector_groups)
  if similarity_matrix:
    logits = 2 * m * m * final
  else:
    logits = 2 * m * (1 + k) * final
  return {
      "feature_encoder": b * encoder,
      "feature_projection": b * 2 * t * conv_out * d,
      "positional_conv": b * 2 * pos_kernel * (d // groups) * d * pos_frames,
      "attention_projections": b * layers * per_layer_proj,
      "attention_scores": b * layers * per_layer_scores,
      "feed_forward": b * layers * per_layer_ffn,
      "quantizer": b * quantizer,
      "loss_projections": b * 2 * m * (config.codevector_dim + d) * final,
      "contrastive_logits": b * logits,
  }


def train_step_flops(config: Wav2Vec2Config, size: StepSize) -> dict[str, int]:
  """Model FLOPs of one optimizer step (forward + backward = 3x forward), per component and "total"."""
  breakdown = {name: TRAIN_MULTIPLIER * value for name, value in forward_flops(config, size).items()}
  breakdown["total"] = sum(breakdown.values())
  return breakdown


def format_breakdown(breakdown: dict[str, int]) -> str:
  """One line per component: TFLOPs and share of the total."""
  total = breakdown["total"]
  lines = []
  for name, value in breakdown.items():
    if name != "total":
      lines.append(f"  {name:<24}{value / 1e12:>14.3f} TFLOP {100 * value / max(total, 1):>6.1f}%")
  lines.append(f"  {'total':<24}{total / 1e12:>14.3f} TFLOP")
  return "\n".join(lines)


def row_train_flops(config: Wav2Vec2Config, objective, num_samples: int) -> float:
  """Model FLOPs of one row of `num_samples` samples in a train step, with the masked bound M of
  that length (objective: mask_prob, mask_length, min_masks, num_negatives). For useful MFU: the
  FLOPs a row's real audio needs, whatever crop it was computed in."""
  from xlsr_jax.objectives import masking  # pylint: disable=import-outside-toplevel
  frames = frame_lengths(num_samples, config)
  if frames < 1:
    return 0.0
  size = StepSize(batch=1, num_samples=num_samples, num_masked=masking.max_masked_frames(
      frames, objective.mask_prob, objective.mask_length, objective.min_masks),
      num_negatives=objective.num_negatives)
  return float(train_step_flops(config, size)["total"])
