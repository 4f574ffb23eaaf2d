"""The speech-translation task (X -> English) on the downstream stack, used by
`xlsr_jax.downstream.evaluation_run`.

Targets: a corpus's "translation" field (CoVoST 2), or on `synthetic_speech` each transcript's
English rendering (texts.english_rendering);
utterances with no single rendering (an ambiguous segmentation in vi, cmn, ja) are left out of
training and scoring, and counted. Text goes through sentencepiece (the init's model when it is a
translation export or an mBART decoder, else one trained on the training targets).

Saved model (`save_model`): Orbax params {"wav2vec2", "adapter", ["enc_to_dec_proj"], "decoder"}
and model_config.json (the encoder config under "model", so `downstream.encoders.load_encoder`
reads the encoder out of it, and the adapter/decoder under "translation"), the sentencepiece model,
and the Hugging Face layout in `hf/` (config.json + model.safetensors that
`transformers.SpeechEncoderDecoderModel.from_pretrained` loads).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from data_pipelines.synthetic_speech import texts
from xlsr_jax.checkpoints.translation_files import is_translation_export, load_decoder, load_model
from xlsr_jax.downstream.vocabulary import Vocabulary, build_vocabulary
from xlsr_jax.downstream.translation.text import Tokenizer, train_tokenizer
from xlsr_jax.models.config import Wav2Vec2Config
from xlsr_jax.models.speech_translation import SpeechToText, SpeechTranslationConfig
from xlsr_jax.models.text_decoder import DecoderConfig, get_decoder_preset




def english_target(language: str, transcript: str) -> str | None:
  """The English reference of a synthetic utterance, None when it has no single rendering."""
  try:
    return texts.english_rendering(language, transcript)
  except texts.UnparsableTranscript:
    return None


def targets(index) -> list[str | None]:
  """English targets of every utterance of a SplitIndex (None = left out): the corpus's
  translation field (CoVoST 2) where it has one, else the synthetic transcript's rendering."""
  if index.translations:
    return [t.strip() or None for t in index.translations]
  return [english_target(l, t) for l, t in zip(index.languages, index.transcripts)]


@dataclasses.dataclass(frozen=True)
class TranslationLabeler:
  """tf.data labels: labels int32 [max_target_length] (pieces + </s>, -100 after) and label int32
  (0, or -1 for an utterance without a target or with a target too long: the train iterator drops
  label < 0). With a `source_vocabulary` (auxiliary CTC) also source_labels int32 and
  source_label_valid bool [max_source_length]: the transcript's characters (a transcript longer
  than max_source_length also gets label -1)."""
  tokenizer: Tokenizer
  max_target_length: int
  source_vocabulary: Vocabulary | None = None
  max_source_length: int = 0

  def __call__(self, ex: dict) -> dict:
    import tensorflow as tf

    def encode(language, transcript, translation=None):
      if translation is not None:  # a corpus with translations (CoVoST 2)
        target = translation.decode("utf-8").strip() or None
      else:
        target = english_target(language.decode("utf-8"), transcript.decode("utf-8"))
      empty = np.full((self.max_target_length,), -100, np.int32)
      source = np.zeros((max(self.max_source_length, 1),), np.int32)
      source_valid = np.zeros(source.shape, bool)
      ids = [] if target is None else self.tokenizer.encode(target)
      chars = ([] if self.source_vocabulary is None
               else self.source_vocabulary.encode(transcript.decode("utf-8")))
      if target is None or len(ids) > self.max_target_length or len(chars) > len(source):
        return empty, np.int32(-1), source, source_valid
      empty[:len(ids)] = ids
      source[:len(chars)], source_valid[:len(chars)] = chars, True
      return empty, np.int32(0), source, source_valid

    inputs = [ex["language"], ex["transcript"]] + ([ex["translation"]] if "translation" in ex else [])
    labels, label, source, source_valid = tf.numpy_function(
        encode, inputs, [tf.int32, tf.int32, tf.int32, tf.bool])
    out = {"labels": tf.ensure_shape(labels, [self.max_target_length]),
           "label": tf.ensure_shape(label, [])}
    if self.source_vocabulary is not None:
      out["source_labels"] = tf.ensure_shape(source, [self.max_source_length])
      out["source_label_valid"] = tf.ensure_shape(source_valid, [self.max_source_length])
    return out


def translation_config(config: ml_collections.ConfigDict, encoder: Wav2Vec2Config,
                       vocab_size: int, decoder: DecoderConfig | None = None) -> SpeechTranslationConfig:
  """Encoder config + the adapter and decoder of `config.translation` (decoder preset sized to the
  tokenizer), or a given decoder config (a translation export or an imported mBART decoder)."""
  t = config.translation
  if decoder is None:
    overrides = {"vocab_size": vocab_size}
    if t.decoder_dropout >= 0:
      overrides["dropout"] = t.decoder_dropout
    decoder = get_decoder_preset(t.decoder_preset, **overrides)
  limit = decoder.max_position_embeddings - 1
  if t.max_decode_length > limit or t.max_target_length > decoder.max_position_embeddings:
    raise ValueError(f"translation.max_decode_length={t.max_decode_length} / max_target_length="
                     f"{t.max_target_length} exceed the decoder's {decoder.max_position_embeddings} "
                     f"positions")
  return SpeechTranslationConfig(encoder, decoder, add_adapter=t.add_adapter,
                                 num_adapter_layers=t.num_adapter_layers,
                                 adapter_kernel_size=t.adapter_kernel_size,
                                 adapter_stride=t.adapter_stride,
                                 output_hidden_size=t.output_hidden_size)


def tokenizer_for(config: ml_collections.ConfigDict, init_dir: str | None,
                  train_targets: list[str | None]) -> Tokenizer:
  """translation.tokenizer if set, else the init's sentencepiece model, else one trained on the
  training targets (vocab_size an upper bound)."""
  t = config.translation
  if t.tokenizer:
    return Tokenizer.load(t.tokenizer)
  if init_dir:
    return Tokenizer.load(init_dir)
  return train_tokenizer(sorted({x for x in train_targets if x is not None}), t.vocab_size)


def build(config: ml_collections.ConfigDict, loaded, encoder_config: Wav2Vec2Config, train_index
          ) -> tuple[SpeechToText, dict, TranslationLabeler, Tokenizer, dict]:
  """(model, loaded parts, labeler, tokenizer, data counts) for evaluate.run."""
  t = config.translation
  train_targets = targets(train_index)
  loaded_parts: dict[str, Any] = {"wav2vec2": loaded.params} if loaded.params else {}
  decoder, tokenizer_dir = None, None
  if loaded.source == "export" and is_translation_export(loaded.path):
    params, stored, _, _ = load_model(loaded.path)
    loaded_parts = params
    decoder, tokenizer_dir = stored.decoder, loaded.path
    model_cfg = stored.replace(encoder=encoder_config)
  if t.decoder_init:
    if decoder is not None:
      raise ValueError("translation.decoder_init is set but the init is already a translation "
                       "model with its own decoder")
    params, decoder_cfg = load_decoder(t.decoder_init)
    loaded_parts["decoder"] = params
    decoder, tokenizer_dir = decoder_cfg, t.decoder_init
  tokenizer = tokenizer_for(config, tokenizer_dir, train_targets)
  if decoder is None or t.decoder_init:
    model_cfg = translation_config(config, encoder_config, tokenizer.vocab_size, decoder)
  source_vocabulary = None
  if t.ctc_weight > 0:  # joint CTC/attention: characters of the training transcripts
    source_vocabulary = build_vocabulary(train_index.transcripts)
    model_cfg = model_cfg.replace(ctc_vocab_size=source_vocabulary.size)
  if (model_cfg.decoder.vocab_size < tokenizer.vocab_size
      or (not tokenizer.offset and model_cfg.decoder.vocab_size != tokenizer.vocab_size)):
    raise ValueError(f"the decoder has {model_cfg.decoder.vocab_size} outputs but the "
                     f"sentencepiece model {tokenizer.path} gives {tokenizer.vocab_size} ids")
  counts = {"train_utterances": len(train_targets),
            "train_without_target": sum(x is None for x in train_targets),
            "vocab_size": tokenizer.vocab_size}
  labeler = TranslationLabeler(tokenizer, t.max_target_length, source_vocabulary=source_vocabulary,
                               max_source_length=t.ctc_max_source_length if source_vocabulary else 0)
  return SpeechToText(model_cfg), loaded_parts, labeler, tokenizer, counts


def score(tokens: np.ndarray, index, tokenizer: Tokenizer, num_examples: int = 20) -> dict:
  """BLEU / chrF (per language and averaged) of decoded tokens [n, length] against the English
  targets of `index` (same order); utterances without a target are counted, not scored."""
  from xlsr_jax.downstream.translation.text import translation_metrics
  refs = targets(index)
  hyps = [tokenizer.decode(row) for row in tokens]
  keep = [i for i, r in enumerate(refs) if r is not None]
  if not keep:
    raise ValueError("no test utterance has an English target")
  results = translation_metrics([hyps[i] for i in keep], [refs[i] for i in keep],
                                [index.languages[i] for i in keep])
  results["excluded_without_target"] = len(refs) - len(keep)
  # Examples: a few per language, in a fixed order.
  per_lang: dict[str, int] = {}
  examples = []
  for i in keep:
    lang = index.languages[i]
    if per_lang.get(lang, 0) < max(1, num_examples // max(len(set(index.languages)), 1)):
      per_lang[lang] = per_lang.get(lang, 0) + 1
      examples.append({"language": lang, "source": index.transcripts[i], "reference": refs[i],
                       "hypothesis": hyps[i]})
  results["examples"] = examples[:max(num_examples, len(per_lang))]
  return results


def examples_markdown(examples: list[dict]) -> str:
  """The report's example table: source transcript, English reference, model output."""
  rows = ["| lang | source | reference | hypothesis |", "|---|---|---|---|"]
  cell = lambda s: s.replace("|", "\\|")
  for e in examples:
    rows.append(f"| {e['language']} | {cell(e['source'])} | {cell(e['reference'])} | "
                f"{cell(e['hypothesis'])} |")
  return "\n".join(rows)
