"""The `synthetic_speech` TFDS builder (espeak-ng, no download); importing registers it."""
from data_pipelines.synthetic_speech.synthetic_speech_dataset_builder import (
    CORPUS, DEFAULT_LANGUAGES, SyntheticSpeech, SyntheticSpeechConfig, corpus_builder, not_built_message)

__all__ = ["CORPUS", "DEFAULT_LANGUAGES", "SyntheticSpeech", "SyntheticSpeechConfig",
           "corpus_builder", "not_built_message"]
