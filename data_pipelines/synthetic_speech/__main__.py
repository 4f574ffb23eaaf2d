"""Build the corpus: `python -m data_pipelines.synthetic_speech --data_dir=DIR [--config=tiny]`.

Prints the hours per language (all splits, then train), the build time and the utterance
length distribution.
"""
import time

from absl import app, flags
import tensorflow_datasets as tfds

from data_pipelines import DEFAULT_DATA_DIR
from data_pipelines.build_outputs import beam_pipeline_options
from data_pipelines.features import language_split_name
from data_pipelines.synthetic_speech.synthetic_speech_dataset_builder import SPLITS, SyntheticSpeech

_DATA_DIR = flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "TFDS data directory to build into.")
_CONFIG = flags.DEFINE_string("config", "default", "Builder config: default, tiny or translation.")
_BEAM = flags.DEFINE_string(
    "beam_pipeline_options", "", "Build as an Apache Beam pipeline with these comma-separated "
    "options (as `tfds build` takes them), e.g. runner=DirectRunner,direct_num_workers=4,"
    "direct_running_mode=multi_processing: each (language, split) on a worker. Needs "
    "requirements-beam.txt.")


def main(argv) -> None:
  del argv
  tfds.disable_progress_bar()
  builder = SyntheticSpeech(config=_CONFIG.value, data_dir=_DATA_DIR.value)
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_options=beam_pipeline_options(_BEAM.value)))
  elapsed = time.perf_counter() - start
  metadata = builder.info.metadata
  print(f"{builder.info.full_name} in {builder.data_dir}")
  print(f"{'language':>8} {'hours':>8} {'train h':>8} {'utts':>6}")
  for lang, hours in metadata["language_hours"].items():
    utts = sum(builder.info.splits[language_split_name(s, lang)].num_examples for s in SPLITS)
    train = metadata["hours"][language_split_name("train", lang)]
    print(f"{lang:>8} {hours:8.4f} {train:8.4f} {utts:6d}")
  report = metadata["build_report"]
  print(f"total {sum(metadata['language_hours'].values()):.3f} h in {report['kept']} utterances "
        f"({report['skipped']} too short, skipped); build time {elapsed:.1f} s")
  lengths = metadata["length_seconds"]
  stats = ", ".join(f"{k} {lengths[k]:.2f}"
                    for k in ("min", "p10", "p25", "p50", "p75", "p90", "p99", "max", "mean"))
  print(f"utterance seconds: {stats}; {lengths['under_2s']:.1%} under 2 s")


if __name__ == "__main__":
  app.run(main)
