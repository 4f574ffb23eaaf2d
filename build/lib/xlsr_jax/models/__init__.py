"""Flax modules of wav2vec 2.0 / XLS-R and their presets."""
from xlsr_jax.models.config import PRESETS, Wav2Vec2Config, get_preset
from xlsr_jax.models.wav2vec2 import Wav2Vec2ForPreTraining, Wav2Vec2Model
