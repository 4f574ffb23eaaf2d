"""Every builder as an Apache Beam pipeline (DirectRunner) gives the single-process build's data.

Skipped when apache-beam is not installed (pip install -r requirements-beam.txt; scripts/test.sh
--full installs it). Each corpus is built from a fixture in its real layout once single-process and
once on Beam; the splits, example order, audio, report and the length index must be the same.
A Beam pipeline costs about 10-30 s on the 2-core test machine (multi_processing starts worker
processes that import TensorFlow), so the builds are `slow` and the in-process DirectRunner
(in_memory, 2 workers) is used for all corpora but one, which runs in multi_processing mode.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from etils import epath
import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

import tensorflow_datasets as tfds  # noqa: E402

from data_pipelines import audio_io, beam_build, build_outputs  # noqa: E402
from tensorflow_datasets.core import hashing  # noqa: E402
from data_pipelines.corpora import BUILDERS, Covost2, read_build_report  # noqa: E402
from data_pipelines.corpora import __main__ as cli  # noqa: E402
from data_pipelines.corpora import base  # noqa: E402
from data_pipelines.corpora.covost2 import TranslatedUtterance  # noqa: E402
from data_pipelines.sources import read_split  # noqa: E402
from data_pipelines.synthetic_speech import SyntheticSpeech, SyntheticSpeechConfig  # noqa: E402
from data_pipelines.voxceleb import Voxceleb  # noqa: E402
from tests.fixtures import make_corpus_fixtures as fixtures  # noqa: E402
from tests.test_corpora import CONFIGS  # noqa: E402
from tests.test_covost2 import _make as make_covost2  # noqa: E402
from tests.test_voxceleb import make_manual_dir as make_voxceleb  # noqa: E402

IN_MEMORY = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=in_memory"
MULTI_PROCESSING = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
# corpus -> (builder class, config, fixture maker)
CORPORA = {name: (BUILDERS[name], CONFIGS[name], make) for name, make in fixtures.MAKERS.items()}
CORPORA["covost2"] = (Covost2, "all", make_covost2)
CORPORA["voxceleb"] = (Voxceleb, "all", make_voxceleb)
MINI_SYNTHETIC = SyntheticSpeechConfig(
    name="beam_mini", languages=("ru",), head_minutes=0.3, zipf_exponent=2.0,
    speakers_per_language=2, min_utterances_per_speaker=1, short_tokens=(3, 8),
    long_tokens=(9, 22), max_sentence_tokens=8)


@dataclasses.dataclass
class Build:
  builder: tfds.core.DatasetBuilder
  examples: dict[str, list[dict]]  # split -> examples in split order
  report: dict | None
  lengths: dict[str, np.ndarray]  # split -> the build's length index


def _build(builder: tfds.core.DatasetBuilder, manual_dir: Path | None, beam_flags: str = "",
           **config) -> Build:
  options = beam_build.pipeline_options(beam_flags) if beam_flags else None
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir) if manual_dir else None, beam_options=options,
      compute_stats=tfds.download.ComputeStatsMode.SKIP, **config))
  examples = {s: list(tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)))
              for s in builder.info.splits}
  report = (read_build_report(builder.data_dir)
            if (Path(builder.data_dir) / "build_report.json").exists() else None)
  lengths = {s: np.load(build_outputs.lengths_path(builder.data_dir, s)) for s in builder.info.splits}
  return Build(builder, examples, report, lengths)


def _read_build(dataset_dir: str) -> Build:
  builder = tfds.builder_from_directory(dataset_dir)
  return Build(builder, {s: list(tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)))
                         for s in builder.info.splits}, read_build_report(dataset_dir),
               {s: np.load(build_outputs.lengths_path(dataset_dir, s)) for s in builder.info.splits})


def _assert_same_data(single: Build, beam_build_: Build) -> None:
  a, b = single.builder.info.splits, beam_build_.builder.info.splits
  assert {s: a[s].num_examples for s in a} == {s: b[s].num_examples for s in b}
  for split, examples in single.examples.items():
    other = beam_build_.examples[split]
    assert [e["id"] for e in examples] == [e["id"] for e in other], split  # same split order
    for x, y in zip(examples, other):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{split} {x['id']} {key}")
    np.testing.assert_array_equal(single.lengths[split], beam_build_.lengths[split])
    # The build's index is what reading the split gives (what split_lengths computed before).
    read = [int(ex["audio"].shape[0]) for ex in tfds.as_numpy(read_split(
        beam_build_.builder, split, shuffle_seed=None, cycle_length=1))]
    np.testing.assert_array_equal(beam_build_.lengths[split], read)


@pytest.fixture(scope="module")
def corpora_root(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("beam_corpora")


# Built on Beam here: BABEL (segments of longer recordings), CoVoST 2 (its own feature and
# utterance class), VoxCeleb (TFDS's builder underneath, zip extraction); audio_manifest through the
# command line below. The other corpora differ from these only in how the driver lists utterances,
# which is the same code in both modes; their work lines are checked in the fast test after this.
BEAM_BUILT = ("babel", "covost2", "voxceleb")


@pytest.mark.slow
@pytest.mark.parametrize("corpus", BEAM_BUILT)
def test_corpus_builds_the_same_on_beam(corpora_root, corpus):
  cls, config, make = CORPORA[corpus]
  manual = corpora_root / corpus / "manual"
  make(manual)
  single = _build(cls(config=config, data_dir=str(corpora_root / corpus / "single")), manual)
  on_beam = _build(cls(config=config, data_dir=str(corpora_root / corpus / "beam")), manual, IN_MEMORY)
  _assert_same_data(single, on_beam)
  # Reports name files by path; voxceleb's are extracted under each build's own data_dir.
  r1, r2 = (json.loads(json.dumps(b.report).replace(str(corpora_root / corpus / mode), "DATA"))
            for b, mode in ((single, "single"), (on_beam, "beam")))
  assert (r2["kept"], r2["skipped_count"], r2["empty_splits"]) == (
      r1["kept"], r1["skipped_count"], r1["empty_splits"])
  if corpus != "voxceleb":  # its manifest rows hold the paths extracted under each data_dir
    assert r2["manifest"] == r1["manifest"]
  assert sorted(r2["skipped"]) == sorted(r1["skipped"])
  assert r2["hours"] == pytest.approx(r1["hours"], rel=1e-12)
  assert r2["shards"] == r1["shards"] == {s: 1 for s in r1["hours"]}
  # Beam metrics: what the workers kept and skipped (the driver skips unusable manifest rows and
  # the files before a split's first usable one before the pipeline starts).
  assert r1["beam_metrics"] is None
  assert r2["beam_metrics"]["kept"] == r2["kept"]
  assert 0 < r2["beam_metrics"]["skipped"] <= r2["skipped_count"] or corpus == "voxceleb"
  data_dir = Path(on_beam.builder.data_dir)
  assert not (data_dir / beam_build.WORK_DIR).exists() and not (data_dir / beam_build.RECORDS_DIR).exists()


@pytest.mark.parametrize("corpus", sorted(set(CORPORA) - set(BEAM_BUILT)))
def test_every_corpus_decodes_the_same_from_its_beam_work_lines(tmp_path, corpus):
  """What a Beam worker decodes (a work line read back) is what the single-process build decodes."""
  cls, config, make = CORPORA[corpus]
  make(tmp_path / "manual")
  builder = cls(config=config, data_dir=str(tmp_path / "data"))
  builder._report = audio_io.BuildReport()
  utterances = builder._selected_utterances(epath.Path(tmp_path / "manual"))
  options = builder._decode_options()
  kept = 0
  for utt in utterances:
    line = beam_build.utterance_to_json(utt)
    back = beam_build.utterance_from_json(json.loads(json.dumps(line)))
    assert back == utt
    want, got = base.decode_utterance(utt, options), list(base.beam_decode(back, options))
    if isinstance(want, str):
      assert got == [want]
    else:
      kept += 1
      assert got[0][0] == want["id"] and got[0][1].keys() == want.keys()
      np.testing.assert_array_equal(got[0][1]["audio"], want["audio"])
  assert kept > 0


@pytest.mark.slow
def test_cli_beam_build_with_two_worker_processes_and_a_changed_manifest(tmp_path):
  """`python -m data_pipelines.corpora ... --beam_pipeline_options=` (DirectRunner, 2 worker
  processes) and `tfds build`: the single-process data, bad files skipped and counted, a changed
  manifest refused."""
  manual = tmp_path / "manual"
  fixtures.make_audio_manifest(manual)
  single = _build(BUILDERS["audio_manifest"](config="all", data_dir=str(tmp_path / "single")), manual)
  args = ["audio_manifest", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "beam")]
  data_dir = cli.main(args + ["--beam_pipeline_options", MULTI_PROCESSING])
  on_beam = _read_build(data_dir)
  builder = on_beam.builder
  _assert_same_data(single, on_beam)
  assert on_beam.report["skipped_count"] == single.report["skipped_count"] == 8
  assert on_beam.report["beam_metrics"]["kept"] == single.report["kept"] == 5
  assert on_beam.report["beam_metrics"]["skipped"] == 4  # broken, empty, missing, short: on workers
  # TFDS's own command line, naming the builder's file (the corpus builders are not registered).
  root = Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build",
                  str(root / "data_pipelines" / "corpora" / "audio_manifest.py"),
                  f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds_cli'}",
                  f"--beam_pipeline_options={IN_MEMORY}"],
                 check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(root)))
  tfds_dir = tmp_path / "tfds_cli" / "audio_manifest" / "all" / str(builder.info.version)
  _assert_same_data(single, _read_build(str(tfds_dir)))
  manifest = manual / "manifest.tsv"
  manifest.write_text(manifest.read_text() + "clips/added.wav\tde\t\t\ttrain\n")
  with pytest.raises(SystemExit, match="changed since"):
    cli.main(args + ["--beam_pipeline_options", MULTI_PROCESSING])


@pytest.mark.slow
def test_synthetic_speech_builds_the_same_on_beam(tmp_path):
  """Two shards per split (TFDS's num_shards): the length index is checked against, and must
  follow, the example order across shard files."""
  single = _build(SyntheticSpeech(config=MINI_SYNTHETIC, data_dir=str(tmp_path / "single")), None,
                  num_shards=2)
  on_beam = _build(SyntheticSpeech(config=MINI_SYNTHETIC, data_dir=str(tmp_path / "beam")), None,
                   IN_MEMORY, num_shards=2)
  for split in single.builder.info.splits.values():
    assert len(split.file_instructions) == 2
  _assert_same_data(single, on_beam)
  assert dict(on_beam.builder.info.metadata) == dict(single.builder.info.metadata)
  assert on_beam.builder._beam_metrics["kept"] == single.builder.info.metadata["build_report"]["kept"]


def test_utterance_work_lines_round_trip_with_their_class(tmp_path):
  utt = TranslatedUtterance(split="train", language="de", path=epath.Path(tmp_path / "a b.mp3"),
                            id="de/a b.mp3", transcript="Zug «x»", speaker="s", translation="Train")
  back = beam_build.utterance_from_json(beam_build.utterance_to_json(utt))
  assert back == utt and type(back) is TranslatedUtterance
  assert back.extra_features() == {"translation": "Train"}


def test_length_index_order_is_tfds_hash_order():
  keys = [f"en/{i}.mp3" for i in range(50)]
  order = build_outputs.split_order("train_en", keys)
  hasher = hashing.Hasher("train_en")
  hashes = [hasher.hash_key(keys[i]) for i in order]
  assert hashes == sorted(hashes) and sorted(order) == list(range(50))
  assert order != list(range(50))


class _GraphOnly(beam.runners.runner.PipelineRunner):
  """Builds the portable job graph a remote runner would be sent, then stops the build."""

  class Stop(Exception):
    pass

  def run_pipeline(self, pipeline, options):
    self.proto = pipeline.to_runner_api()
    self.options = options
    raise self.Stop()


@pytest.mark.parametrize("flags,runner", [
    ("runner=DataflowRunner,project=my-project,region=us-central1,temp_location=gs://b/tmp,"
     "staging_location=gs://b/staging,job_name=cv-build,num_workers=4,max_num_workers=200,"
     "machine_type=n2-highcpu-16,experiments=use_runner_v2,"
     "extra_packages=dist/xlsr_jax-0.1.0-py3-none-any.whl,requirements_file=requirements.txt",
     "DataflowRunner"),
    ("runner=FlinkRunner,flink_master=localhost:8081,environment_type=LOOPBACK,parallelism=8",
     "FlinkRunner"),
    ("runner=SparkRunner,spark_master_url=spark://localhost:7077,environment_type=LOOPBACK",
     "SparkRunner"),
])
def test_remote_runner_options_parse_and_the_job_graph_builds(tmp_path, flags, runner):
  """The docs' launch options parse, and the whole build's Beam job graph (decode, TFDS's shard
  writer, the records) is built with them; nothing is submitted (no network here)."""
  options = beam_build.pipeline_options(flags)
  assert options.get_all_options()["runner"] == runner
  if runner == "DataflowRunner":
    gcp = options.view_as(beam.options.pipeline_options.GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("my-project", "us-central1", "gs://b/tmp")
    workers = options.view_as(beam.options.pipeline_options.WorkerOptions)
    assert (workers.num_workers, workers.max_num_workers, workers.machine_type) == (
        4, 200, "n2-highcpu-16")
  manual = tmp_path / "manual"
  fixtures.make_audio_manifest(manual)
  graph_only = _GraphOnly()
  builder = BUILDERS["audio_manifest"](config="all", data_dir=str(tmp_path / "data"))
  with pytest.raises(_GraphOnly.Stop):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), beam_runner=graph_only, beam_options=options,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  names = [t.unique_name for t in graph_only.proto.components.transforms.values()]
  for split in ("train_en", "validation_yo", "test_yo"):
    assert any(n.endswith(f"Decode_{split}") for n in names), split
    assert any(n.endswith(f"WriteRecords_{split}") for n in names), split
  assert any("WriteFinalShards" in n for n in names)
  shutil.rmtree(tmp_path / "data", ignore_errors=True)
