"""The pretraining objective as pure, jittable functions with static shapes.

masking: span masks and masked-frame gathering; negatives: distractor sampling; losses: the
contrastive, diversity and feature-penalty terms as sums and counts (`pretraining_sums`), divided
once by `normalize`.
"""
from xlsr_jax.objectives.losses import (codebook_perplexity, contrastive_logits, contrastive_loss,
                                        diversity_loss, feature_penalty, negatives_equal_positive,
                                        normalize, pretraining_loss, pretraining_sums,
                                        row_fingerprints)
from xlsr_jax.objectives.masking import (compute_channel_mask, compute_span_mask, gather_frames,
                                         masked_positions, max_masked_frames, max_spans,
                                         num_feature_frames)
from xlsr_jax.objectives.negatives import sample_negatives

__all__ = [
    "codebook_perplexity", "compute_channel_mask", "compute_span_mask", "contrastive_logits",
    "contrastive_loss", "diversity_loss", "feature_penalty", "gather_frames", "masked_positions",
    "max_masked_frames", "max_spans", "negatives_equal_positive", "normalize",
    "num_feature_frames", "pretraining_loss", "pretraining_sums", "row_fingerprints",
    "sample_negatives",
]
