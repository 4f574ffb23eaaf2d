"""The espeak-ng wrapper and the `synthetic_speech` builder (tiny config, built into tmp dirs)."""
import _ctypes
import ctypes
import dataclasses
import unicodedata

import espeakng_loader
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import espeak, input_pipeline
from data_pipelines.features import SAMPLE_RATE, language_split_name
from data_pipelines.synthetic_speech import synthetic_speech_dataset_builder as ss
from data_pipelines.synthetic_speech import texts

TINY = ss.SyntheticSpeech.builder_configs["tiny"]
DEFAULT = ss.SyntheticSpeech.builder_configs["default"]


def _build(data_dir, config=TINY) -> ss.SyntheticSpeech:
  tfds.disable_progress_bar()
  builder = ss.SyntheticSpeech(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def _examples(builder) -> dict[str, list[dict]]:
  """Every split's examples, sorted by id."""
  return {split: sorted(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)),
                        key=lambda e: e["id"])
          for split in builder.info.splits.keys()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(data_dir, builder, examples by split) of one tiny build, shared by the tests below."""
  data_dir = tmp_path_factory.mktemp("tiny")
  builder = _build(data_dir)
  return data_dir, builder, _examples(builder)


def test_espeak_output_depends_only_on_text_voice_and_seed():
  voice = espeak.Voice("en", "f2", pitch=60, rate=160, pitch_range=40)
  text = "seven friends took the train on Monday morning"
  first = espeak.synthesize(text, voice, seed=3)
  espeak.synthesize("vierzehn Züge", espeak.Voice("de", "m3", pitch=90, rate=300), seed=5)
  again = espeak.synthesize(text, voice, seed=3)
  assert first.dtype == np.int16 and first.shape[0] > espeak.ESPEAK_SAMPLE_RATE
  np.testing.assert_array_equal(first, again)
  other_speaker = espeak.synthesize(text, dataclasses.replace(voice, pitch=30), seed=3)
  assert not np.array_equal(first, other_speaker[:first.shape[0]])


def test_espeak_unknown_voice_names_it():
  with pytest.raises(ValueError, match="no voice 'xx'"):
    espeak.synthesize("hello", espeak.Voice("xx"))


def test_espeak_refuses_to_run_while_the_library_is_held_elsewhere():
  held = ctypes.CDLL(espeakng_loader.get_library_path())  # as espeakng_loader.load_library() does
  try:
    with pytest.raises(RuntimeError, match="stayed loaded"):
      espeak.synthesize("hello", espeak.Voice("en"))
  finally:
    _ctypes.dlclose(held._handle)
  assert espeak.synthesize("hello", espeak.Voice("en")).size > 0


def test_default_config_lexicons_are_spoken_in_their_own_language():
  DEFAULT.validate()
  assert len(DEFAULT.languages) >= 20
  for lang in DEFAULT.languages:
    phonemes = espeak.text_to_phonemes(", ".join(texts.LEXICONS[lang].tokens()), lang)
    foreign = set(espeak.language_switches(phonemes)) - {lang}
    assert not foreign, f"{lang}: espeak switched to {foreign} while reading the lexicon"


def test_config_with_unknown_language_is_rejected():
  config = dataclasses.replace(TINY, name="bad", languages=("en", "tlh"))
  with pytest.raises(ValueError, match="tlh"):
    config.validate()


def test_tiny_build_has_every_split_with_16k_int16_speech(tiny):
  _, builder, examples = tiny
  audio_feature = builder.info.features["audio"]
  assert audio_feature.dtype == np.int16 and audio_feature.shape == (None,)
  assert str(SAMPLE_RATE) in audio_feature.doc.desc
  expected = {language_split_name(s, lang) for lang in TINY.languages for s in ss.SPLITS}
  assert set(examples) == expected
  for split, rows in examples.items():
    lang = split.split("_", 1)[1]
    speakers = [e["speaker"].decode() for e in rows]
    for e in rows:
      audio, transcript = e["audio"], e["transcript"].decode()
      assert audio.dtype == np.int16 and audio.ndim == 1
      assert e["duration"] == pytest.approx(audio.shape[0] / SAMPLE_RATE, abs=1e-6)
      assert e["duration"] >= TINY.min_seconds
      assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 300, f"{e['id']} is near silent"
      assert transcript and transcript == unicodedata.normalize("NFC", transcript)
      assert e["language"].decode() == lang and e["corpus"].decode() == "synthetic_speech"
    # Several speakers per language, each with several utterances in every split.
    counts = {s: speakers.count(s) for s in set(speakers)}
    assert len(counts) == TINY.speakers_per_language, f"{split}: {counts}"
    assert min(counts.values()) >= TINY.min_utterances_per_speaker, f"{split}: {counts}"
    assert all(s.startswith(f"{lang}_") for s in counts)


def test_tiny_build_stores_under_2_1_bytes_a_sample_and_reads_back_what_was_written(tiny):
  data_dir, builder, examples = tiny
  for split, rows in examples.items():
    samples = sum(e["audio"].shape[0] for e in rows)
    num_bytes = builder.info.splits[split].num_bytes  # the whole TFRecord: audio and metadata
    assert 0 < num_bytes <= 2.1 * samples, (split, num_bytes / samples)
  # The pretraining pipeline's reader, on the build read back from its files, returns exactly the
  # int16 samples the builder synthesised (espeak's output depends only on text, voice and seed).
  written = {f"cmn_{plan.index:06d}": audio
             for plan, _, audio in ss.split_utterances(TINY, "cmn", "test")}
  reread = tfds.builder("synthetic_speech/tiny", data_dir=str(data_dir))
  ds = input_pipeline.read_split(reread, language_split_name("test", "cmn"), shuffle_seed=None,
                                 cycle_length=1)
  read = {e["id"].decode(): e["audio"] for e in tfds.as_numpy(ds)}
  assert set(read) == set(written)
  for id_, audio in written.items():
    assert read[id_].dtype == np.int16
    np.testing.assert_array_equal(read[id_], audio, err_msg=id_)


def test_tiny_splits_are_disjoint(tiny):
  _, _, examples = tiny
  for lang in TINY.languages:
    seen_text, seen_id = set(), set()
    for split in ss.SPLITS:
      rows = examples[language_split_name(split, lang)]
      text = {e["transcript"] for e in rows}
      ids = {e["id"] for e in rows}
      assert len(text) == len(rows), f"{lang}/{split}: repeated transcript"
      assert not text & seen_text and not ids & seen_id, f"{lang}/{split} overlaps another split"
      seen_text |= text
      seen_id |= ids


def test_tiny_metadata_records_unequal_hours_of_the_data(tiny):
  data_dir, _, examples = tiny
  metadata = ss.SyntheticSpeech(config="tiny", data_dir=str(data_dir)).info.metadata  # from disk
  for split, rows in examples.items():
    assert metadata["hours"][split] == pytest.approx(
        sum(float(e["duration"]) for e in rows) / 3600, rel=1e-5)
  assert metadata["build_report"]["kept"] == sum(len(rows) for rows in examples.values())
  hours, target = metadata["language_hours"], metadata["target_hours"]
  for lang in TINY.languages:
    assert hours[lang] >= target[lang], f"{lang}: built {hours[lang]} h < target {target[lang]}"
  head, *tail = TINY.languages
  assert hours[head] < target[head] + 3 * 10 / 3600  # overshoots by at most a few utterances
  assert all(hours[head] > 2 * hours[lang] for lang in tail), hours


def test_tiny_metadata_records_the_length_distribution(tiny):
  data_dir, _, examples = tiny
  seconds = np.array([float(e["duration"]) for rows in examples.values() for e in rows])
  lengths = ss.SyntheticSpeech(config="tiny", data_dir=str(data_dir)).info.metadata[
      "length_seconds"]
  assert lengths["count"] == seconds.size
  assert lengths["min"] == pytest.approx(seconds.min(), abs=1e-4)
  assert lengths["max"] == pytest.approx(seconds.max(), abs=1e-4)
  assert lengths["p50"] == pytest.approx(np.median(seconds), abs=1e-4)
  assert lengths["under_2s"] == pytest.approx(np.mean(seconds < 2.0))
  # Short clips and joined sentences both: some under 2 s, some over three times that.
  assert 0 < lengths["under_2s"] < 1 and lengths["max"] > 6.0


def test_plan_joins_distinct_sentences_into_long_utterances():
  plans = [p for _, p in zip(range(300), ss.language_plan(DEFAULT, "cmn"))]
  sentences = [s for p in plans for s in p.sentences]
  assert len(set(sentences)) == len(sentences)
  assert len({p.text for p in plans}) == len(plans)
  assert all(p.text == "".join(p.sentences) for p in plans)  # cmn is written without spaces
  joined = [p for p in plans if len(p.sentences) > 1]
  # Close to long_share of the utterances join sentences (binomial sd ~ 0.026 for 300 draws).
  assert abs(len(joined) / len(plans) - DEFAULT.long_share) < 0.1
  assert ss.sentence_tokens(60, 16) == [15, 15, 15, 15]
  assert ss.sentence_tokens(17, 16) == [9, 8] and ss.sentence_tokens(16, 16) == [16]
  rng = np.random.default_rng(0)
  tokens = [ss.utterance_tokens(DEFAULT, rng) for _ in range(2000)]
  assert min(tokens) == DEFAULT.short_tokens[0] and max(tokens) == DEFAULT.long_tokens[1]


def test_default_config_spans_about_1_to_25_seconds():
  """The first 40 utterances of two languages, synthesised as the default build does."""
  seconds = []
  for lang in ("en", "fi"):
    speakers = ss.language_speakers(DEFAULT, lang)
    for i, plan in zip(range(40), ss.language_plan(DEFAULT, lang)):
      seconds.append(ss.synthesize_utterance(plan, speakers[i % len(speakers)].voice).size
                     / SAMPLE_RATE)
  seconds = np.array(seconds)
  assert seconds.min() < 2.0 and 0.05 < np.mean(seconds < 2.0) < 0.4, np.sort(seconds)
  assert 12.0 < seconds.max() < 30.0 and np.mean(seconds > 8.0) > 0.1, np.sort(seconds)


def test_two_builds_with_the_same_seed_are_identical(tiny, tmp_path):
  _, _, examples = tiny
  again = _examples(_build(tmp_path))
  assert set(again) == set(examples)
  for split, rows in examples.items():
    assert len(again[split]) == len(rows)
    for a, b in zip(rows, again[split]):
      assert a["id"] == b["id"] and a["transcript"] == b["transcript"]
      assert a["speaker"] == b["speaker"] and a["audio"].tobytes() == b["audio"].tobytes()


def test_a_different_seed_gives_different_utterances():
  def first_three(config):
    rows = zip(range(3), ss.split_utterances(config, "en", "train"))
    return [(plan.text, speaker.id, audio) for _, (plan, speaker, audio) in rows]

  base = first_three(TINY)
  other = first_three(dataclasses.replace(TINY, name="tiny_seed1", seed=1))
  assert [t for t, _, _ in base] != [t for t, _, _ in other]
  assert {s for _, s, _ in base} != {s for _, s, _ in other}
  assert all(a.shape != b.shape or not np.array_equal(a, b)
             for (_, _, a), (_, _, b) in zip(base, other))


def test_translation_config_is_one_sentence_clips_with_english_renderings_unlike_default():
  """The offline speech-translation corpus: equal minutes per language, one-sentence clips (no
  joined sentences), every transcript with one English rendering, and texts and speakers that
  differ from the default build the demo pretrains on (seed 1)."""
  config = ss.SyntheticSpeech.builder_configs["translation"]
  config.validate()
  assert len(set(config.target_minutes().values())) == 1
  for lang in config.languages:
    plans = [p for _, p in zip(range(30), ss.language_plan(config, lang))]
    assert all(len(p.sentences) == 1 for p in plans)
    assert all(texts.english_rendering(lang, p.text) for p in plans)
    default_texts = {p.text for _, p in zip(range(30), ss.language_plan(DEFAULT, lang))}
    assert not default_texts & {p.text for p in plans}
    assert ({s.id for s in ss.language_speakers(config, lang)}
            != {s.id for s in ss.language_speakers(DEFAULT, lang)})
