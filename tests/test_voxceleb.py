"""The VoxCeleb1 builder on a fixture tree in the release's layout, written by the test.

manual_dir holds vox1_dev_wav.zip and vox1_test_wav.zip (wav/<speaker>/<video>/<nnnnn>.wav,
1 s tones at 16 kHz) and iden_split.txt ("<1|2|3> <speaker>/<video>/<nnnnn>.wav"); one listed
file has a truncated header and one is listed but in neither archive: both must be skipped and
counted.
"""
from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from data_pipelines import input_pipeline
from data_pipelines.corpora import __main__ as cli
from data_pipelines.corpora import read_build_report
from data_pipelines.features import SAMPLE_RATE
from data_pipelines.voxceleb import LANGUAGE, Voxceleb, read_split_list, speaker_of
from tests.fixtures.make_corpus_fixtures import tone_hz

SECONDS = 1.0
# (iden_split group, path, archive, tone seed); archive None: listed but in no archive.
FILES = [
    ("1", "id10001/1zcIwhmdeo4/00001.wav", "vox1_dev_wav.zip", 0),
    ("1", "id10001/1zcIwhmdeo4/00002.wav", "vox1_dev_wav.zip", 1),
    ("2", "id10001/7gWzIy6yIIk/00001.wav", "vox1_dev_wav.zip", 2),
    ("3", "id10001/9mQ11vBs1wc/00001.wav", "vox1_dev_wav.zip", 3),
    ("1", "id10002/6WO410QOeuo/00001.wav", "vox1_dev_wav.zip", 4),
    ("3", "id10002/C7k7C-PDvAA/00001.wav", "vox1_dev_wav.zip", 5),
    ("1", "id10270/5r0dWxy17C8/00001.wav", "vox1_test_wav.zip", 6),
    ("3", "id10270/x6uYqmx31kE/00001.wav", "vox1_test_wav.zip", 7),
]
CORRUPT = ("1", "id10002/6WO410QOeuo/00002.wav", "vox1_dev_wav.zip")  # header cut at 20 bytes
MISSING = ("2", "id10309/0cYFdtyWVds/00001.wav")  # in the list, in no archive
UNLISTED = "id10001/1zcIwhmdeo4/00003.wav"  # in an archive, not in the list: not read
SPLITS = {"1": "train", "2": "validation", "3": "test"}


def _wav_bytes(seed: int, seconds: float = SECONDS) -> bytes:
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  wave = 0.3 * np.sin(2 * np.pi * tone_hz(seed) * t)
  buffer = io.BytesIO()
  sf.write(buffer, wave.astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
  return buffer.getvalue()


def make_manual_dir(root: Path, *, with_split_list: bool = True) -> Path:
  """The fixture tree (see the module docstring) under `root`; returns `root`."""
  root.mkdir(parents=True, exist_ok=True)
  members: dict[str, dict[str, bytes]] = {}
  for _, path, archive, seed in FILES:
    members.setdefault(archive, {})[f"wav/{path}"] = _wav_bytes(seed)
  members[CORRUPT[2]][f"wav/{CORRUPT[1]}"] = _wav_bytes(0)[:20]
  members["vox1_dev_wav.zip"][f"wav/{UNLISTED}"] = _wav_bytes(9)
  for archive, files in members.items():
    with zipfile.ZipFile(root / archive, "w") as z:
      for name, data in sorted(files.items()):
        z.writestr(name, data)
  lines = [f"{group} {path}" for group, path, *_ in FILES + [CORRUPT, MISSING]]
  if with_split_list:
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
  return root


def _download_config(manual_dir: Path) -> tfds.download.DownloadConfig:
  return tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP)


def _read(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, dict]]:
  return {split: {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
          for split in builder.info.splits}


@dataclasses.dataclass
class Built:
  builder: tfds.core.DatasetBuilder
  data_dir: Path
  examples: dict[str, dict[str, dict]]
  report: dict


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
  root = tmp_path_factory.mktemp("voxceleb")
  manual_dir = make_manual_dir(root / "manual")
  builder = Voxceleb(config="all", data_dir=str(root / "data"))
  builder.download_and_prepare(download_config=_download_config(manual_dir))
  return Built(builder, root / "data", _read(builder), read_build_report(builder.data_dir))


def _dominant_hz(audio: np.ndarray) -> float:
  spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
  return float(np.argmax(spectrum)) * SAMPLE_RATE / audio.shape[0]


def test_builds_the_identification_splits_in_the_shared_schema(built):
  expected = {}
  for group, path, _, seed in FILES:
    expected.setdefault(f"{SPLITS[group]}_{LANGUAGE}", {})[path] = seed
  assert {s: set(ids) for s, ids in built.examples.items()} == {
      s: set(ids) for s, ids in expected.items()}
  for split, by_id in built.examples.items():
    for id_, ex in by_id.items():
      audio = ex["audio"]
      assert audio.dtype == np.int16 and audio.shape == (int(SECONDS * SAMPLE_RATE),), id_
      assert abs(_dominant_hz(audio) - tone_hz(expected[split][id_])) < 3.0, id_
      assert ex["duration"] == pytest.approx(SECONDS)
      assert ex["speaker"].decode() == id_.split("/")[0]
      assert (ex["language"].decode(), ex["corpus"].decode(), ex["transcript"].decode()) == (
          LANGUAGE, "voxceleb", "")


def test_corrupt_and_missing_files_are_skipped_and_counted(built):
  lines = built.report["skipped"]
  assert built.report["skipped_count"] == len(lines) == 2, lines
  assert sum(CORRUPT[1] in line and "cannot decode" in line for line in lines) == 1, lines
  assert sum(MISSING[1] in line and "file not found" in line for line in lines) == 1, lines
  assert built.report["kept"] == len(FILES)
  assert built.report["hours"] == pytest.approx(
      {"train_und": 4 * SECONDS / 3600, "validation_und": SECONDS / 3600,
       "test_und": 3 * SECONDS / 3600})


def test_reads_back_by_name_and_the_input_pipeline_finds_its_splits(built):
  reread = tfds.builder("voxceleb/all", data_dir=str(built.data_dir))  # files, not TFDS's class
  assert reread.info.features["audio"].dtype == np.int16
  assert set(reread.info.splits) == {"train_und", "validation_und", "test_und"}
  config = input_pipeline.PipelineConfig(data_dir=str(built.data_dir),
                                         sources=(("voxceleb/all", None),), split="test")
  (source,) = input_pipeline.resolve_sources(config)
  assert (source.language, source.split_name, source.num_examples) == ("und", "test_und", 3)


def test_split_list_is_downloaded_when_manual_dir_has_no_copy(tmp_path, monkeypatch):
  """A path works as the URL (TFDS copies it), so the fallback is tested without a network."""
  manual_dir = make_manual_dir(tmp_path / "manual", with_split_list=False)
  served = make_manual_dir(tmp_path / "served") / "iden_split.txt"
  monkeypatch.setattr(Voxceleb, "SPLIT_LIST_URL", str(served))
  builder = Voxceleb(config="all", data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(download_config=_download_config(manual_dir))
  assert builder.info.splits["train_und"].num_examples == 4


def test_no_split_list_and_no_download_is_an_error_naming_the_expected_path(tmp_path, monkeypatch):
  manual_dir = make_manual_dir(tmp_path / "manual", with_split_list=False)
  monkeypatch.setattr(Voxceleb, "SPLIT_LIST_URL", str(tmp_path / "offline" / "iden_split.txt"))
  builder = Voxceleb(config="all", data_dir=str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match=rf"put a copy of iden_split.txt at {manual_dir}/"):
    builder.download_and_prepare(download_config=_download_config(manual_dir))
  extracted = tmp_path / "data" / "downloads" / "extracted"  # TFDS makes it empty up front
  assert not extracted.exists() or not any(extracted.iterdir())  # failed before extracting


def test_no_archive_is_an_error_naming_the_expected_files(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "iden_split.txt").write_text(f"1 {FILES[0][1]}\n")
  builder = Voxceleb(config="all", data_dir=str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match=r"none of vox_dev_wav.zip, vox1_dev_wav.zip"):
    builder.download_and_prepare(download_config=_download_config(tmp_path / "manual"))


def test_cli_builds_voxceleb_from_an_extracted_wav_folder(tmp_path):
  manual_dir = make_manual_dir(tmp_path / "manual")
  for archive in ("vox1_dev_wav.zip", "vox1_test_wav.zip"):  # extracted by hand instead
    with zipfile.ZipFile(manual_dir / archive) as z:
      z.extractall(manual_dir)
    (manual_dir / archive).unlink()
  data_dir = cli.main(["voxceleb", "--manual_dir", str(manual_dir), "--data_dir",
                       str(tmp_path / "data")])
  report = read_build_report(data_dir)
  assert (report["kept"], report["skipped_count"]) == (len(FILES), 2)
  assert set(tfds.builder_from_directory(data_dir).info.splits) == {
      "train_und", "validation_und", "test_und"}


def test_split_list_parsing():
  text = "1 id10001/1zcIwhmdeo4/00001.wav\n\n3 id10002/C7k7C-PDvAA/00001.wav\n"
  assert read_split_list(text, "s.txt") == [("train", "id10001/1zcIwhmdeo4/00001.wav"),
                                            ("test", "id10002/C7k7C-PDvAA/00001.wav")]
  assert speaker_of("id10002/C7k7C-PDvAA/00001.wav") == "id10002"
  with pytest.raises(ValueError, match=r"s.txt:2: expected '<1\|2\|3> .*found '4 a/b/c.wav'"):
    read_split_list("1 a/b/c.wav\n4 a/b/c.wav", "s.txt")
  with pytest.raises(ValueError, match=r"s.txt:1: path 'a/c.wav' is not"):
    read_split_list("1 a/c.wav", "s.txt")
  with pytest.raises(ValueError, match=r"s.txt:3: a/b/c.wav is listed again \(first on line 1\)"):
    read_split_list("1 a/b/c.wav\n2 a/b/d.wav\n3 a/b/c.wav", "s.txt")
