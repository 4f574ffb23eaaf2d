"""Build one corpus: `python -m data_pipelines.corpora common_voice --manual_dir ... --data_dir ...`.

Corpora: common_voice, voxpopuli, multilingual_librispeech, voxlingua107, babel, audio_manifest
and voxceleb (speaker identification).

The options override the chosen BuilderConfig (default "all"); give a new `--config_name` when
changing them, since the name picks the output folder <data_dir>/<corpus>/<config_name>/<version>.

`--beam_pipeline_options=runner=DirectRunner,direct_num_workers=8,direct_running_mode=multi_processing`
(or a Dataflow, Flink or Spark runner's options) runs the build as an Apache Beam pipeline: the same
data, decoded on the runner's workers (needs requirements-beam.txt; docs/corpus_builds_beam.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import tensorflow_datasets as tfds

from data_pipelines import DEFAULT_DATA_DIR, build_outputs, corpora
from data_pipelines.corpora import read_build_report
from data_pipelines.corpora.manifest_check import ManifestChanged
from data_pipelines.voxceleb import Voxceleb

# The corpora, and VoxCeleb (its own package: it subclasses TFDS's builder; registering it in
# corpora/__init__ would make the two packages import each other).
BUILDERS = {**corpora.BUILDERS, Voxceleb.name: Voxceleb}


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m data_pipelines.corpora", description=__doc__)
  parser.add_argument("corpus", choices=sorted(BUILDERS))
  parser.add_argument("--manual_dir", required=True, help="where the downloaded corpus is")
  parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                      help=f"where the TFDS dataset is written (default {DEFAULT_DATA_DIR})")
  parser.add_argument("--config", default="all", help="a BuilderConfig of the corpus to start from")
  parser.add_argument("--config_name", help="name of the resulting config (default: --config, "
                      "or the languages joined by '+' when --languages is given)")
  parser.add_argument("--languages", default="", help="comma-separated codes; default: all found")
  parser.add_argument("--min_duration_s", type=float)
  parser.add_argument("--max_duration_s", type=float)
  parser.add_argument("--min_sample_rate", type=int)
  parser.add_argument("--validation_fraction", type=float)
  parser.add_argument("--num_workers", type=int)
  parser.add_argument("--train_tsv", choices=("train", "validated"), help="common_voice only")
  parser.add_argument("--overwrite", action="store_true",
                      help="delete an existing build of this config and build it again (needed when "
                      "the manifest or the files under manual_dir changed)")
  parser.add_argument("--compute_stats", action="store_true",
                      help="let TFDS compute statistics (one more pass over the data)")
  parser.add_argument("--beam_pipeline_options", default="",
                      help="build as an Apache Beam pipeline with these comma-separated options, as "
                      "`tfds build` takes them, e.g. runner=DirectRunner,direct_num_workers=8,"
                      "direct_running_mode=multi_processing (pip install -r requirements-beam.txt)")
  parser.add_argument("--num_shards", type=int,
                      help="shard files per split (TFDS's num_shards; default: TFDS's rule, 1024 "
                      "for a split of 64 GiB and up); must not exceed the smallest split's examples")
  return parser.parse_args(argv)


def make_config(args: argparse.Namespace):
  """The chosen BuilderConfig of `args.corpus` with the command-line overrides applied."""
  cls = BUILDERS[args.corpus]
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  if args.config not in configs:
    raise SystemExit(f"{args.corpus}: no config {args.config!r}; choose from {sorted(configs)}")
  languages = tuple(l.strip() for l in args.languages.split(",") if l.strip())
  name = args.config_name or ("+".join(languages) if languages else args.config)
  overrides = {k: getattr(args, k) for k in ("min_duration_s", "max_duration_s", "min_sample_rate",
                                             "validation_fraction", "num_workers", "train_tsv")
               if getattr(args, k) is not None}
  if "train_tsv" in overrides and args.corpus != "common_voice":
    raise SystemExit("--train_tsv applies to common_voice only")
  if name == args.config and not languages and not overrides:
    return configs[args.config]  # TFDS refuses a copy named like one of the class's configs
  return dataclasses.replace(configs[args.config], name=name, languages=languages, **overrides)


def main(argv: list[str]) -> str:
  """Builds the corpus; returns the dataset folder (which holds build_report.json)."""
  args = parse_args(argv)
  builder = BUILDERS[args.corpus](config=make_config(args), data_dir=args.data_dir)
  modes = tfds.download.ComputeStatsMode
  stats = modes.AUTO if args.compute_stats else modes.SKIP
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if args.overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  beam_options = build_outputs.beam_pipeline_options(args.beam_pipeline_options)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=args.manual_dir, compute_stats=stats, download_mode=mode,
        beam_options=beam_options, num_shards=args.num_shards))
  except ManifestChanged as e:
    raise SystemExit(f"error: {e}") from None
  report = read_build_report(builder.data_dir)
  print(f"{builder.data_dir}: kept {report['kept']} utterances, skipped {report['skipped_count']} "
        f"(details in build_report.json); hours per split: {report['hours']}")
  return str(builder.data_dir)


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main(sys.argv[1:])
