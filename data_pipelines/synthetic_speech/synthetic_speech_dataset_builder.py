"""`synthetic_speech`: multilingual speech synthesised locally with espeak-ng, the default corpus.

Nothing is downloaded. For every language the build walks one deterministic stream of utterances,
each made of one or more consecutive distinct sentences (texts.py) and drawn into train,
validation or test, so the splits never share a sentence. Each split takes utterances from the
stream until it holds its share of the language's target minutes and every speaker has
`min_utterances_per_speaker` utterances in it. Syntheses shorter than `min_seconds` are skipped.
Speakers are espeak voice variants with their own pitch, rate and pitch range, assigned round
robin, so speaker ids are meaningful for SID.

Utterance lengths mix the corpora XLS-R trains on: most are short read clips like Common Voice's
(`short_tokens`, one sentence), a `long_share` are long segments like VoxPopuli's and MLS's
(`long_tokens`: sentences of at most `max_sentence_tokens` tokens, each synthesised on its own and
joined, so the pauses between them are espeak's own). Lexicon tokens last about 0.35 s: the
default config gives about 1 to 25 s, some under 2 s (the pretraining pipeline drops those).

Target minutes fall off with the language's rank (Zipf: head_minutes / (rank + 1)^zipf_exponent),
a long tail on purpose, so that n^alpha language sampling matters. The measured amounts go in the
dataset metadata (`builder.info.metadata`, a JSON dict), readable without touching any audio, in
the keys every corpus builder writes (corpora/base.py) plus a few of its own:
  "hours":          {split name, e.g. "train_en": hours}
  "build_report":   {"kept": utterances, "skipped": too short, "empty_splits": []}
  "language_hours": {language: hours over all splits}
  "target_hours":   {language: configured hours over all splits}
  "speakers":       {language: [speaker ids]}
  "length_seconds": {"count", "min", "p10", "p25", "p50", "p75", "p90", "p99", "max", "mean",
                     "under_2s" (share)}: utterance lengths over all splits
  "languages", "config": the configuration (seed included).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import audio_io, build_outputs, espeak
from data_pipelines.features import SAMPLE_RATE, language_split_name, speech_features
from data_pipelines.synthetic_speech import texts

CORPUS = "synthetic_speech"
SPLITS = ("train", "validation", "test")
# Rank order sets the long tail: European head, lower-resource tail (10 scripts, 11 families).
DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "uk", "cs", "el", "tr",
                     "fi", "hu", "ar", "hi", "id", "vi", "cmn", "ja", "ko", "bn", "ta", "sw")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
PITCH_RANGE, RATE_RANGE, PITCH_SPAN_RANGE = (35, 65), (150, 195), (35, 65)  # inclusive
_SPEAKER_STREAM, _PLAN_STREAM = 1, 2
_MAX_SKIPPED_IN_A_ROW = 50


@dataclasses.dataclass(eq=False)
class SyntheticSpeechConfig(tfds.core.BuilderConfig):
  """What to synthesise: languages (espeak voices with a lexicon in texts.py), how many minutes
  of each, speakers per language, sentence lengths in lexicon tokens, split fractions, seed."""
  languages: tuple[str, ...] = DEFAULT_LANGUAGES
  head_minutes: float = 24.0  # target minutes (all splits) of the first language
  zipf_exponent: float = 1.0  # language of rank r gets head_minutes / (r + 1) ** zipf_exponent
  speakers_per_language: int = 4
  min_utterances_per_speaker: int = 2  # in every split; sets a floor on the tail's minutes
  # Lengths in lexicon tokens (about 0.35 s each), inclusive ranges, log-uniform within each:
  short_tokens: tuple[int, int] = (4, 16)  # one-sentence clips (Common Voice)
  long_tokens: tuple[int, int] = (17, 60)  # joined sentences (VoxPopuli, MLS segments)
  long_share: float = 0.3  # share of utterances drawn from long_tokens
  max_sentence_tokens: int = 16  # a longer utterance joins ceil(tokens / this) sentences
  min_seconds: float = 1.0  # shorter syntheses are skipped
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test
  seed: int = 0

  def target_minutes(self) -> dict[str, float]:
    """Configured minutes per language over all splits (before the per-speaker floor)."""
    return {lang: self.head_minutes / (rank + 1) ** self.zipf_exponent
            for rank, lang in enumerate(self.languages)}

  def validate(self) -> None:
    """Raise ValueError naming the field when the configuration cannot be built."""
    unknown = [lang for lang in self.languages if lang not in texts.LEXICONS]
    if unknown or len(set(self.languages)) != len(self.languages) or not self.languages:
      raise ValueError(f"config {self.name!r}: languages must be distinct and in texts.LEXICONS "
                       f"({sorted(texts.LEXICONS)}); unknown {unknown} in {self.languages}")
    if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0 or not np.isclose(
        sum(self.split_fractions), 1.0):
      raise ValueError(f"config {self.name!r}: split_fractions must be 3 positive numbers summing "
                       f"to 1, found {self.split_fractions}")
    if not 1 <= self.speakers_per_language <= min(len(FEMALE_VARIANTS), len(MALE_VARIANTS)) * 2:
      raise ValueError(f"config {self.name!r}: speakers_per_language must be in [1, 10], found "
                       f"{self.speakers_per_language}")
    for name in ("short_tokens", "long_tokens"):
      low, high = getattr(self, name)
      if not 1 <= low <= high:
        raise ValueError(f"config {self.name!r}: {name} must be (low, high) with "
                         f"1 <= low <= high, found {(low, high)}")
    if not 0 <= self.long_share <= 1 or self.max_sentence_tokens < 1:
      raise ValueError(f"config {self.name!r}: need 0 <= long_share <= 1 and "
                       f"max_sentence_tokens >= 1, found {self.long_share}, "
                       f"{self.max_sentence_tokens}")
    if self.min_utterances_per_speaker < 1 or self.head_minutes <= 0 or self.min_seconds < 0:
      raise ValueError(f"config {self.name!r}: need min_utterances_per_speaker >= 1, "
                       f"head_minutes > 0 and min_seconds >= 0, found "
                       f"{self.min_utterances_per_speaker}, {self.head_minutes}, "
                       f"{self.min_seconds}")


@dataclasses.dataclass(frozen=True)
class Speaker:
  id: str  # f"{language}_{variant}_p{pitch}_r{rate}"
  voice: espeak.Voice


@dataclasses.dataclass(frozen=True)
class PlannedUtterance:
  index: int  # position in the language's utterance stream; unique within the language
  split: str
  sentences: tuple[str, ...]  # consecutive distinct sentences, spoken one after another
  text: str  # the transcript: the sentences joined by the language's word separator
  espeak_seed: int  # sentence j is synthesised with seed espeak_seed + j


def language_speakers(config: SyntheticSpeechConfig, language: str) -> list[Speaker]:
  """The language's speakers: distinct voice variants alternating female/male, random pitch,
  rate and pitch range; deterministic for (seed, language)."""
  rng = np.random.default_rng(texts.language_seed(config.seed, language, _SPEAKER_STREAM))
  female = list(rng.permutation(FEMALE_VARIANTS))
  male = list(rng.permutation(MALE_VARIANTS))
  speakers = []
  for s in range(config.speakers_per_language):
    variant = (female if s % 2 == 0 else male).pop()
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    rate = int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1))
    span = int(rng.integers(PITCH_SPAN_RANGE[0], PITCH_SPAN_RANGE[1] + 1))
    voice = espeak.Voice(language, variant, pitch=pitch, rate=rate, pitch_range=span)
    speakers.append(Speaker(f"{language}_{variant}_p{pitch}_r{rate}", voice))
  return speakers


def utterance_tokens(config: SyntheticSpeechConfig, rng: np.random.Generator) -> int:
  """Length of one utterance in tokens: log-uniform in `long_tokens` with probability
  `long_share`, else in `short_tokens` (both inclusive)."""
  low, high = config.long_tokens if rng.random() < config.long_share else config.short_tokens
  return min(high, int(np.exp(rng.uniform(np.log(low), np.log(high + 1)))))


def sentence_tokens(num_tokens: int, max_sentence_tokens: int) -> list[int]:
  """`num_tokens` split into the fewest sentences of at most `max_sentence_tokens`, near equal."""
  count = -(-num_tokens // max_sentence_tokens)
  base, extra = divmod(num_tokens, count)
  return [base + (j < extra) for j in range(count)]


def language_plan(config: SyntheticSpeechConfig, language: str) -> Iterator[PlannedUtterance]:
  """Endless deterministic stream of the language's utterances, each drawn into one split with
  probability `split_fractions`; no sentence and no transcript occurs twice."""
  rng = np.random.default_rng(texts.language_seed(config.seed, language, _PLAN_STREAM))
  separator = texts.LEXICONS[language].separator
  seen: set[str] = set()  # sentences and transcripts so far
  index = 0
  while True:
    split = SPLITS[rng.choice(len(SPLITS), p=config.split_fractions)]
    espeak_seed = int(rng.integers(2**31))
    sentences = tuple(
        texts.unique_sentence(language, rng, n, seen)
        for n in sentence_tokens(utterance_tokens(config, rng), config.max_sentence_tokens))
    text = separator.join(sentences)
    if len(sentences) > 1:
      if text in seen:  # a joined transcript equal to an earlier sentence: draw another
        continue
      seen.add(text)
    yield PlannedUtterance(index, split, sentences, text, espeak_seed)
    index += 1


def synthesize_16k(text: str, voice: espeak.Voice, seed: int) -> np.ndarray:
  """espeak (22,050 Hz int16) -> float -> soxr resample -> int16 `[samples]` at 16 kHz."""
  wave_22k = espeak.synthesize(text, voice, seed).astype(np.float32) / 32768.0
  return audio_io.float_to_int16(audio_io.resample(wave_22k, espeak.ESPEAK_SAMPLE_RATE))


def synthesize_utterance(planned: PlannedUtterance, voice: espeak.Voice) -> np.ndarray:
  """int16 `[samples]` at 16 kHz: each sentence of `planned` synthesised on its own, joined."""
  return np.concatenate([synthesize_16k(text, voice, (planned.espeak_seed + j) % 2**31)
                         for j, text in enumerate(planned.sentences)])


def length_summary(seconds: Sequence[float]) -> dict[str, float]:
  """Count, min, percentiles, max and mean of utterance lengths (s), and the share under 2 s."""
  x = np.asarray(seconds, np.float64)
  if x.size == 0:
    raise ValueError("length_summary of no utterances")
  summary = {"count": int(x.size), "min": float(x.min())}
  summary.update({f"p{q}": float(np.percentile(x, q)) for q in (10, 25, 50, 75, 90, 99)})
  summary.update({"max": float(x.max()), "mean": float(x.mean()),
                  "under_2s": float(np.mean(x < 2.0))})
  return summary


def split_utterances(config: SyntheticSpeechConfig, language: str, split: str,
                     report: audio_io.BuildReport | None = None,
                     ) -> Iterator[tuple[PlannedUtterance, Speaker, np.ndarray]]:
  """Synthesise one (language, split) until it holds its target seconds and every speaker has
  `min_utterances_per_speaker` utterances: yields (plan, speaker, int16 16 kHz audio).

  Kept and skipped utterances are counted in `report`. A synthesis shorter than `min_seconds`
  is skipped and the same speaker takes the next sentence, so speakers stay balanced.
  """
  report = report if report is not None else audio_io.BuildReport()
  split_name = language_split_name(split, language)
  speakers = language_speakers(config, language)
  target_s = config.target_minutes()[language] * 60 * config.split_fractions[SPLITS.index(split)]
  min_count = config.min_utterances_per_speaker * len(speakers)
  count, seconds, skipped_in_a_row = 0, 0.0, 0
  for planned in language_plan(config, language):
    if count >= min_count and seconds >= target_s:
      return
    if planned.split != split:
      continue
    speaker = speakers[count % len(speakers)]
    audio = synthesize_utterance(planned, speaker.voice)
    if not np.any(audio):
      raise RuntimeError(f"{CORPUS} {language}/{split} utterance {planned.index}: silent audio "
                         f"from {speaker.voice} for {planned.text!r}")
    duration = audio.shape[0] / SAMPLE_RATE
    if duration < config.min_seconds:
      report.skip(f"{language}/{split} utterance {planned.index}: {duration:.2f} s < min_seconds "
                  f"{config.min_seconds}")
      skipped_in_a_row += 1
      if skipped_in_a_row >= _MAX_SKIPPED_IN_A_ROW:
        raise RuntimeError(f"config {config.name!r} {language}/{split}: {skipped_in_a_row} "
                           f"syntheses in a row shorter than min_seconds {config.min_seconds}; "
                           f"raise short_tokens {config.short_tokens}")
      continue
    skipped_in_a_row = 0
    report.keep(split_name, duration)
    yield planned, speaker, audio
    count += 1
    seconds += duration


def split_examples(config: SyntheticSpeechConfig, language: str, split: str,
                   report: audio_io.BuildReport | None = None) -> Iterator[tuple[str, dict]]:
  """`(key, example)` of one (language, split) in the shared schema, in stream order."""
  for planned, speaker, audio in split_utterances(config, language, split, report):
    key = f"{language}_{planned.index:06d}"
    yield key, {
        "audio": audio, "language": language, "corpus": CORPUS, "speaker": speaker.id,
        "transcript": planned.text, "duration": np.float32(audio.shape[0] / SAMPLE_RATE),
        "id": key,
    }


def beam_split_examples(item: tuple[str, str], config: SyntheticSpeechConfig
                        ) -> Iterator[tuple[str, dict] | str]:
  """A Beam worker's step (`beam_build.BuildSplit`): one (language, split) synthesised whole
  (each split's stream stops on the seconds it has kept, so it is one unit of work); the
  too-short syntheses it skipped follow as their reasons."""
  language, split = item
  report = audio_io.BuildReport()
  yield from split_examples(config, language, split, report)
  yield from report.skipped


class SyntheticSpeech(tfds.core.GeneratorBasedBuilder):
  """Multilingual espeak-ng speech with transcripts and speaker ids; splits `<split>_<lang>`.

  With TFDS's `beam_runner` / `beam_options` each (language, split) is synthesised on a Beam
  worker (`data_pipelines/beam_build.py`): the same examples and metadata, in parallel.
  """

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "2.0.0": "Audio stored as zlib-compressed int16 bytes (features.audio_feature): 1.70 bytes "
               "a sample instead of 5.47 as int64 varints; readers get the same int16 [samples]. "
               "Utterances of 1-27 s instead of 2-8.6 s: short one-sentence clips and a 30% "
               "tail of joined sentences (length_seconds in the metadata); min_seconds 1.0.",
  }
  BUILDER_CONFIGS = [
      SyntheticSpeechConfig(
          name="default", description="25 languages, 24 minutes for the head, Zipf tail."),
      SyntheticSpeechConfig(
          name="tiny", description="3 languages, a few dozen utterances of 1-10 s: for tests.",
          languages=("en", "ru", "cmn"), head_minutes=1.5, zipf_exponent=2.0,
          speakers_per_language=2, short_tokens=(3, 8), long_tokens=(9, 22),
          max_sentence_tokens=8),
      SyntheticSpeechConfig(
          name="translation",
          description="de, fr, es, it, pt: 40 minutes each of one-sentence clips (CoVoST 2's "
                      "Common Voice shape), seed 1: audio and speakers disjoint from default's. "
                      "The offline speech-translation task's corpus.",
          languages=("de", "fr", "es", "it", "pt"), head_minutes=40.0, zipf_exponent=0.0,
          short_tokens=(3, 12), long_share=0.0, seed=1),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=speech_features(),
        supervised_keys=None,
        homepage="https://github.com/espeak-ng/espeak-ng",
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self.builder_config.validate()
    self._report = audio_io.BuildReport()
    self._beam = build_outputs.beam_requested(download_config)
    self._beam_metrics: dict[str, int] = {}
    self._kept_lengths: dict[str, list[tuple[str, int]]] = {}  # {split: [(key, samples)]}
    super()._download_and_prepare(dl_manager, download_config)
    if self._beam:
      self._kept_lengths = build_outputs.collect_beam_records(
          CORPUS, epath.Path(self.data_dir), self._report, self._beam_metrics)
    build_outputs.write_length_indexes(self, self._kept_lengths)
    logging.info("%s/%s: %s", CORPUS, self.builder_config.name, self._report.summary())
    seconds = [n / SAMPLE_RATE for split in sorted(self._kept_lengths)
               for _, n in sorted(self._kept_lengths[split])]
    self.info.metadata.update(self._build_metadata(self._report, seconds))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: every utterance is synthesised here
    return {language_split_name(split, lang): self._generate_examples(lang, split)
            for lang in self.builder_config.languages for split in SPLITS}

  def _generate_examples(self, language: str, split: str):
    split_name = language_split_name(split, language)
    if self._beam:
      from data_pipelines import beam_build  # only with requirements-beam.txt installed
      return beam_build.BuildSplit(
          split_name, [(language, split)],
          functools.partial(beam_split_examples, config=self.builder_config),
          epath.Path(self.data_dir) / beam_build.RECORDS_DIR)
    return self._generate_locally(language, split, split_name)

  def _generate_locally(self, language: str, split: str, split_name: str):
    for key, example in split_examples(self.builder_config, language, split, self._report):
      self._kept_lengths.setdefault(split_name, []).append((key, example["audio"].shape[0]))
      yield key, example

  def _process_pipeline_result(self, pipeline_result) -> None:
    from data_pipelines import beam_build
    self._beam_metrics = beam_build.metrics_counts(pipeline_result)

  def _build_metadata(self, report: audio_io.BuildReport, seconds: Sequence[float]) -> dict:
    config = self.builder_config
    split_hours = report.hours()
    tfds_fields = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return {
        "hours": split_hours,
        "build_report": {"kept": report.kept, "skipped": len(report.skipped),
                         "empty_splits": list(report.empty_splits)},
        "language_hours": {
            lang: sum(split_hours.get(language_split_name(s, lang), 0.0) for s in SPLITS)
            for lang in config.languages},
        "target_hours": {lang: m / 60 for lang, m in config.target_minutes().items()},
        "languages": list(config.languages),
        "config": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                   if f.name not in tfds_fields},
        "speakers": {lang: [s.id for s in language_speakers(config, lang)]
                     for lang in config.languages},
        "length_seconds": length_summary(seconds),
    }


def corpus_builder(corpus: str, data_dir: str) -> SyntheticSpeech:
  """The builder of `synthetic_speech[/<config>]` (config "default" when none is named) in data_dir."""
  _, _, builder_config = corpus.partition("/")
  return SyntheticSpeech(config=builder_config or "default", data_dir=data_dir)


def not_built_message(corpus: str, data_dir: str) -> str:
  """What to tell a user whose `synthetic_speech[/<config>]` is not in data_dir: the command that
  builds that config, or the setting that builds it on first use."""
  _, _, builder_config = corpus.partition("/")
  return (f"{corpus} is not built in {data_dir}; build it with `python -m data_pipelines.synthetic_speech "
          f"--data_dir={data_dir}{' --config=' + builder_config if builder_config else ''}` or set "
          f"--config.data.build_if_missing=true")
