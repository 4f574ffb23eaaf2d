"""End-to-end tests of the corpus builders, each on a tiny fixture tree in its corpus's real layout."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import audio_io
from data_pipelines.corpora import BUILDERS, CommonVoice, CorpusConfig, read_build_report
from data_pipelines.corpora import __main__ as cli
from data_pipelines.corpora import babel, base
from data_pipelines.features import SAMPLE_RATE
from tests.fixtures import make_corpus_fixtures as fixtures

HOLDOUT = CorpusConfig(name="holdout", validation_fraction=fixtures.HOLDOUT_FRACTION)
CONFIGS = {"common_voice": "all", "voxpopuli": HOLDOUT, "multilingual_librispeech": "all",
           "voxlingua107": HOLDOUT, "babel": "all", "audio_manifest": "all"}
LANGUAGE_OF_SPLIT = {"sv_se": "sv-SE"}  # split suffix -> language field, where they differ
DURATION_TOLERANCE_S = 0.03  # mp3 / vorbis / opus decoders pad or trim a few milliseconds


@dataclasses.dataclass
class Built:
  builder: tfds.core.DatasetBuilder
  manual_dir: Path
  expected: fixtures.Expected
  examples: dict[str, dict[str, dict]]  # split -> id -> example (numpy)
  report: dict


def _download_config(manual_dir) -> tfds.download.DownloadConfig:
  return tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP)


def _read(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, dict]]:
  return {split: {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
          for split in builder.info.splits}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
  """Every corpus made and built once for the module (about 1 s each once TF is loaded)."""
  root = tmp_path_factory.mktemp("corpora")
  out = {}
  for corpus, make in fixtures.MAKERS.items():
    expected = make(root / "manual" / corpus)
    builder = BUILDERS[corpus](config=CONFIGS[corpus], data_dir=str(root / "data"))
    builder.download_and_prepare(download_config=_download_config(root / "manual" / corpus))
    out[corpus] = Built(builder, root / "manual" / corpus, expected, _read(builder),
                        read_build_report(builder.data_dir))
  return out


def _dominant_hz(audio: np.ndarray) -> float:
  spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
  return float(np.argmax(spectrum)) * SAMPLE_RATE / audio.shape[0]


@pytest.mark.parametrize("corpus", sorted(fixtures.MAKERS))
def test_builds_the_expected_splits_and_examples(built, corpus):
  b = built[corpus]
  assert {s: set(ids) for s, ids in b.examples.items()} == {
      s: set(ids) for s, ids in b.expected.splits.items()}
  for split, by_id in b.examples.items():
    suffix = split.split("_", 1)[1]
    for id_, ex in by_id.items():
      want = b.expected.splits[split][id_]
      audio = ex["audio"]
      assert audio.dtype == np.int16 and audio.ndim == 1, (id_, audio.dtype, audio.shape)
      assert abs(audio.shape[0] / SAMPLE_RATE - want.seconds) < DURATION_TOLERANCE_S, id_
      assert ex["duration"] == pytest.approx(audio.shape[0] / SAMPLE_RATE, abs=1e-4)
      # The fixture's tone must come out at its frequency: a wrong source rate would move it.
      assert abs(_dominant_hz(audio) - want.tone_hz) < 3.0, (id_, _dominant_hz(audio), want.tone_hz)
      assert np.abs(audio).max() > 0.2 * 32767, id_  # not silence, not rescaled to nothing
      assert ex["language"].decode() == LANGUAGE_OF_SPLIT.get(suffix, suffix)
      assert ex["corpus"].decode() == corpus
      assert ex["transcript"].decode() == want.transcript, id_
      assert ex["speaker"].decode() == want.speaker, id_


@pytest.mark.parametrize("corpus", sorted(fixtures.MAKERS))
def test_audio_is_stored_in_at_most_2_1_bytes_a_sample(built, corpus):
  b = built[corpus]
  for split, by_id in b.examples.items():
    samples = sum(ex["audio"].shape[0] for ex in by_id.values())
    num_bytes = b.builder.info.splits[split].num_bytes  # the whole TFRecord: audio and metadata
    assert 0 < num_bytes <= 2.1 * samples, (split, num_bytes / samples)


@pytest.mark.parametrize("corpus", sorted(fixtures.MAKERS))
def test_unusable_files_are_skipped_counted_and_reported(built, corpus):
  b = built[corpus]
  lines = b.report["skipped"]
  assert b.report["skipped_count"] == len(lines) == len(b.expected.skipped), lines
  for name in b.expected.skipped:
    assert sum(name in line for line in lines) == 1, (name, lines)
  assert b.report["empty_splits"] == b.expected.empty_splits
  assert b.report["kept"] == sum(len(ids) for ids in b.expected.splits.values())
  kept_hours = {s: sum(float(ex["duration"]) for ex in by_id.values()) / 3600
                for s, by_id in b.examples.items()}
  assert b.report["hours"] == pytest.approx(kept_hours, rel=1e-5)


@pytest.mark.parametrize("corpus", sorted(fixtures.MAKERS))
def test_built_data_reads_back_from_files_with_hours_metadata(built, corpus):
  b = built[corpus]
  reread = tfds.builder(f"{corpus}/{b.builder.builder_config.name}",
                        data_dir=str(b.builder.data_path.parents[2]))
  assert set(reread.info.splits) == set(b.expected.splits)
  assert reread.info.metadata["hours"] == pytest.approx(b.report["hours"])
  assert reread.info.metadata["build_report"]["skipped"] == len(b.expected.skipped)


def test_babel_segments_follow_the_time_marks(built):
  """The 6 s recording holds two speech stretches; the segment's audio is its slice of the file."""
  b = built["babel"]
  rec = "BABEL_OP3_404_12345_20141010_100000_inLine"
  first = b.examples["train_ka"][f"ka/{rec}_0000050_0000250"]["audio"]
  whole = audio_io.decode_audio(next(b.manual_dir.rglob(f"{rec}.sph")))
  assert first.shape == (32000,) and whole.shape == (96000,)
  # Away from the cut (resampling filters see different edges) the samples are the file's.
  np.testing.assert_allclose(first[400:-400], whole[8000 + 400:40000 - 400], atol=2)


def test_common_voice_validated_train_excludes_dev_and_test(built, tmp_path):
  lang_dir = next(built["common_voice"].manual_dir.glob("cv-corpus-*/en"))
  builder = CommonVoice(config="all_validated", data_dir=str(tmp_path))
  splits = {}
  for utt in builder._utterances("en", lang_dir):
    splits.setdefault(utt.split, set()).add(utt.path.name)
  assert "common_voice_en_9.mp3" in splits["train"]  # only listed in validated.tsv
  assert not splits["train"] & (splits["validation"] | splits["test"])


def test_cli_builds_the_chosen_languages_with_threads_to_the_same_data(built, tmp_path):
  b = built["audio_manifest"]
  data_dir = cli.main(["audio_manifest", "--manual_dir", str(b.manual_dir), "--data_dir",
                       str(tmp_path), "--languages", "en,yo", "--num_workers", "3"])
  reread = tfds.builder_from_directory(data_dir)
  assert reread.info.config_name == "en+yo"
  assert set(reread.info.splits) == {"train_en", "validation_yo", "test_yo"}
  for split, by_id in _read(reread).items():
    assert set(by_id) == set(b.examples[split])
    for id_, ex in by_id.items():
      np.testing.assert_array_equal(ex["audio"], b.examples[split][id_]["audio"])
  report = json.loads((tmp_path / "audio_manifest" / "en+yo" / str(base.CorpusBuilder.VERSION)
                       / base.REPORT_FILENAME).read_text())
  assert (report["kept"], report["skipped_count"]) == (5, 7)  # zu's broken file is not read


def test_ordered_map_keeps_the_order_with_threads():
  def slow_square(x):
    time.sleep(0.01 * (x % 3 == 0))  # early items finish last
    return x * x
  assert list(base.ordered_map(slow_square, range(20), 4)) == [x * x for x in range(20)]


def test_unknown_language_is_an_error_that_lists_what_was_found(built, tmp_path):
  builder = BUILDERS["multilingual_librispeech"](
      config=CorpusConfig(name="fr", languages=("fr",)), data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"\['fr'\].*found: \['de', 'pl'\]"):
    builder.download_and_prepare(
        download_config=_download_config(built["multilingual_librispeech"].manual_dir))


def test_babel_transcript_parsing_and_names():
  text = "[0.0]\n<no-speech>\n[1.5]\nhello <breath> there\n[3.25]\n(()) ~\n[4.0]\nbye\n[5.0]\n"
  assert babel.read_segments(text, "t.txt") == [(1.5, 3.25, "hello <breath> there"),
                                                (4.0, 5.0, "bye")]
  with pytest.raises(ValueError, match=r"t.txt:3: time mark \[1.0\] before the previous \[2.0\]"):
    babel.read_segments("[2.0]\nx\n[1.0]\n", "t.txt")
  assert [babel.language_of(d) for d in ("101-cantonese/release-current/BABEL_BP_101",
                                         "IARPA-babel305b-v1.0b-build/BABEL_OP3_305",
                                         "BABEL_OP2_206", "my-swahili")] == [
                                             "yue", "gn", "zu", "my-swahili"]
  assert babel.speaker_of("BABEL_BP_101_37210_20111102_172955_outLine") == "37210_B"
  assert babel.speaker_of("BABEL_BP_101_37210_20111102_170037_O1_scripted") == "37210_A"


def test_decode_audio_segment_past_the_end_names_the_file(tmp_path):
  path = fixtures.write_audio(tmp_path / "a.wav", 1.0, 8000)
  with pytest.raises(audio_io.AudioDecodeError, match=r"a.wav: segment starts at 2.000 s, after"):
    audio_io.decode_audio(path, start_s=2.0, end_s=3.0)
  segment = audio_io.decode_audio(path, start_s=0.25, end_s=0.75)
  assert segment.shape == (8000,)


@pytest.mark.parametrize("corpus", sorted(CONFIGS))
def test_build_writes_the_length_index_the_buckets_read(built, corpus, monkeypatch):
  """The build leaves each split's utterance lengths in split order (what reading the split gives)
  and its shard count in the report, so a pod's first bucketed run decodes nothing to get them."""
  from data_pipelines import build_outputs, sources
  b = built[corpus]
  index = {}
  for split in b.builder.info.splits:
    index[split] = np.load(build_outputs.lengths_path(b.builder.data_dir, split))
    read = [ex["audio"].shape[0] for ex in tfds.as_numpy(
        sources.read_split(b.builder, split, shuffle_seed=None, cycle_length=1))]
    np.testing.assert_array_equal(index[split], read)
  assert b.report["shards"] == {s: len(b.builder.info.splits[s].file_instructions)
                                for s in b.builder.info.splits}
  monkeypatch.setattr(sources, "read_split", None)  # split_lengths must not read the data
  for split, lengths in index.items():
    np.testing.assert_array_equal(sources.split_lengths(b.builder, split), lengths)
