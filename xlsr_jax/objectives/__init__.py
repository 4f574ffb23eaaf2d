"""Pretraining objectives: each one object (base.Objective) in its own module, chosen by
objective.name through the one table below; pure, jittable functions with static shapes.

wav2vec2: the contrastive task (losses: contrastive, diversity and feature-penalty terms as sums
and counts, `pretraining_sums`, divided once by `normalize`; negatives: distractor sampling);
best_rq: cross-entropy on frozen random-projection codes; masking: span masks and masked-frame
gathering, shared by both.
"""
from xlsr_jax.objectives.losses import (codebook_perplexity, contrastive_logits, contrastive_loss,
                                        diversity_loss, feature_penalty, negatives_equal_positive,
                                        normalize, pretraining_loss, pretraining_sums,
                                        row_fingerprints)
from xlsr_jax.objectives.masking import (compute_channel_mask, compute_span_mask, gather_frames,
                                         masked_positions, max_masked_frames, max_spans,
                                         num_feature_frames)
from xlsr_jax.objectives.negatives import sample_negatives
from xlsr_jax.objectives.base import Objective, StepShapes
from xlsr_jax.objectives.best_rq import BestRqObjective
from xlsr_jax.objectives.wav2vec2 import Wav2Vec2Objective

# objective.name -> implementation: the one place an objective is chosen by name.
OBJECTIVES = {"wav2vec2": Wav2Vec2Objective, "best_rq": BestRqObjective}


def make_objective(model_config, objective_config) -> Objective:
  """The objective named by objective_config.name, for a model config (Wav2Vec2Config)."""
  name = objective_config.get("name", "wav2vec2")
  if name not in OBJECTIVES:
    raise ValueError(f"objective.name={name!r} is not an objective; expected one of {sorted(OBJECTIVES)}")
  return OBJECTIVES[name](model_config, objective_config)


__all__ = [
    "OBJECTIVES", "Objective", "StepShapes", "make_objective",
    "codebook_perplexity", "compute_channel_mask", "compute_span_mask", "contrastive_logits",
    "contrastive_loss", "diversity_loss", "feature_penalty", "gather_frames", "masked_positions",
    "max_masked_frames", "max_spans", "negatives_equal_positive", "normalize",
    "num_feature_frames", "pretraining_loss", "pretraining_sums", "row_fingerprints",
    "sample_negatives",
]
