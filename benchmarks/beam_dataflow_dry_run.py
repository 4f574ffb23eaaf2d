"""Checks the documented Dataflow launch offline: the options parse and Dataflow's job is built.

Runs a corpus build (the audio_manifest test fixture) with DataflowRunner and Beam's `dry_run=True`,
which translates the pipeline into the Dataflow job request (`apiclient.Job`: environment, staged
packages, every step) and returns without contacting Google Cloud. TFDS then stops because no shard
was written, which is expected. Needs `apache-beam[gcp]` (not in requirements-beam.txt: a Dataflow
launch needs it, local builds do not), e.g. in its own venv:
  python3 -m venv /tmp/gcp && /tmp/gcp/bin/pip install -r requirements.txt "apache-beam[gcp]==2.77.0"
  /tmp/gcp/bin/pip wheel --no-deps . -w dist
  PYTHONPATH=$PWD /tmp/gcp/bin/python benchmarks/beam_dataflow_dry_run.py
Writes benchmarks/results/beam_dataflow_dry_run.json (options, the job's step names, versions).
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import apache_beam as beam
import tensorflow_datasets as tfds

from data_pipelines import beam_build
from data_pipelines.corpora import AudioManifest
from tests.fixtures import make_corpus_fixtures as fixtures

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
  wheels = sorted(glob.glob(str(ROOT / "dist" / "xlsr_jax-*.whl")))
  if not wheels:
    sys.exit("build the package first: pip wheel --no-deps . -w dist")
  flags = ("runner=DataflowRunner,project=my-project,region=us-central1,"
           "temp_location=gs://my-bucket/tmp,staging_location=gs://my-bucket/staging,"
           "job_name=audio-manifest-build,num_workers=4,max_num_workers=200,"
           "machine_type=n2-highcpu-16,experiments=use_runner_v2,"
           f"extra_packages={wheels[-1]},dry_run=True")
  options = beam_build.pipeline_options(flags)
  captured = {}
  original = beam.runners.dataflow.dataflow_runner.DataflowRunner.run_pipeline

  def run_pipeline(self, pipeline, opts):
    result = original(self, pipeline, opts)
    captured["job"] = result.job
    return result

  beam.runners.dataflow.dataflow_runner.DataflowRunner.run_pipeline = run_pipeline
  with tempfile.TemporaryDirectory() as tmp:
    fixtures.make_audio_manifest(Path(tmp) / "manual")
    builder = AudioManifest(config="all", data_dir=os.path.join(tmp, "data"))
    try:
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.join(tmp, "manual"), beam_options=options,
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
      after = "the build finished (unexpected with dry_run)"
    except Exception as e:  # no shard was written: the dry run stops before the pipeline runs
      after = f"{type(e).__name__}: {str(e)[:200]}"
  job = captured["job"]
  proto = job.proto
  steps = [t.unique_name for t in job.proto_pipeline.components.transforms.values()
           if not t.subtransforms]
  out = {
      "command": "PYTHONPATH=$PWD python benchmarks/beam_dataflow_dry_run.py",
      "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": f"{platform.node()} ({os.cpu_count()} CPUs), offline",
      "versions": {"apache_beam": beam.__version__, "tensorflow_datasets": tfds.__version__,
                   "python": platform.python_version()},
      "beam_pipeline_options": flags.replace(str(ROOT) + "/", ""),
      "job": {"name": proto.name, "batch": str(proto.type) in ("1", "JOB_TYPE_BATCH"),
              "leaf_steps": len(steps),
              "decode_steps": sorted(s for s in steps if "Decode_" in s)},
      "after_dry_run": after,
  }
  path = ROOT / "benchmarks" / "results" / "beam_dataflow_dry_run.json"
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
