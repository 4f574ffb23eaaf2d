"""Bytes on disk per audio sample of a built corpus: benchmarks/results/corpus_storage.json.

  python -m benchmarks.corpus_storage --data_dir=D [--corpus=synthetic_speech/default]

Sums the sizes of the dataset's TFRecord shards and divides by its audio samples (the per-split
hours the builder records in metadata.json x 16 kHz). Every builder stores `audio` as
zlib-compressed int16 (`data_pipelines.features.audio_feature`): uncompressed int16 would be 2
bytes a sample.
"""
from __future__ import annotations

import glob
import json
import os

from absl import app, flags

from benchmarks.provenance import write_results
from data_pipelines.features import SAMPLE_RATE

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir holding the corpus.", required=True)
_CORPUS = flags.DEFINE_string("corpus", "synthetic_speech/default", "Corpus (name/config).")
_OUT = flags.DEFINE_string("out", "corpus_storage.json", "Results file name under "
                           "benchmarks/results/ (empty: print only).")


def storage(dataset_dir: str) -> dict[str, float]:
  """{"bytes", "hours", "samples", "bytes_per_sample"} of one built dataset version directory."""
  size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(dataset_dir, "*.tfrecord*")))
  with open(os.path.join(dataset_dir, "metadata.json")) as f:
    hours = sum(json.load(f)["hours"].values())
  samples = hours * 3600 * SAMPLE_RATE
  return {"bytes": size, "hours": hours, "samples": samples, "bytes_per_sample": size / samples}


def main(argv) -> None:
  del argv
  versions = sorted(glob.glob(os.path.join(_DATA_DIR.value, _CORPUS.value, "*")))
  if not versions:
    raise SystemExit(f"no built {_CORPUS.value} under {_DATA_DIR.value}: build it first "
                     f"(python -m data_pipelines.synthetic_speech --data_dir={_DATA_DIR.value})")
  r = storage(versions[-1])
  r["corpus"] = f"{_CORPUS.value} {os.path.basename(versions[-1])}"
  print(f"{r['corpus']}: {r['bytes'] / 2**20:.0f} MiB for {r['hours']:.3f} h of audio = "
        f"{r['bytes_per_sample']:.2f} bytes per sample (int16 uncompressed: 2)")
  if _OUT.value:
    print(f"wrote {write_results(_OUT.value, {'storage': r})}")


if __name__ == "__main__":
  app.run(main)
