"""The Apache Beam side of every corpus build: one split's work, decoded in parallel workers.

A builder hands each split's work to `BuildSplit` instead of a Python generator when the build
was asked to run on Beam (`build_outputs.beam_requested(download_config)`: TFDS's `beam_runner` or `beam_options`,
e.g. `--beam_pipeline_options=...` on `python -m data_pipelines.corpora` or `tfds build`); TFDS's
Beam writer then hashes, shards and writes the examples exactly as its single-process writer does
(same keys: same order, same examples). Only the utterance list is made on the driver, written as
JSON lines beside the build (`_beam_work/`), so the job graph stays small for any corpus size.

Each work item is turned into examples by a picklable function `fn(item)` that yields
`(key, example)` for a kept utterance or a string naming a skipped one (the reason, as the
single-process build logs it). The DoFn counts both in Beam metrics (namespace
`xlsr_jax_build`: `kept`, `skipped`, `kept_seconds_x1000`), summed over every worker by the runner,
and also writes one JSON line per kept or skipped utterance (`_beam_records/`) that the driver
reads after the pipeline into the same `build_report.json` and the length index
(`build_outputs.py`); the report records the metrics and the build checks that both agree.

Needs `pip install -r requirements-beam.txt`; nothing else in data_pipelines imports this module
unless a Beam build is requested.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from etils import epath

from data_pipelines import audio_io
from data_pipelines.features import SAMPLE_RATE

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "xlsr_jax_build"
WORK_DIR = "_beam_work"  # inside the dataset dir being built; removed after the pipeline
RECORDS_DIR = "_beam_records"

ItemFn = Callable[[Any], Iterable[tuple[str, dict] | str]]


def pipeline_options(flags: str) -> beam.options.pipeline_options.PipelineOptions:
  """PipelineOptions from `runner=DirectRunner,direct_num_workers=2,...` (the `tfds build
  --beam_pipeline_options` syntax: comma-separated `name=value`, each given as `--name=value`)."""
  return beam.options.pipeline_options.PipelineOptions(
      flags=[f"--{opt.strip()}" for opt in flags.split(",") if opt.strip()])


def utterance_to_json(utt: Any) -> str:
  """One work line: the utterance's class (module:qualname) and its fields, paths as strings."""
  fields = {f.name: getattr(utt, f.name) for f in dataclasses.fields(utt)}
  fields["path"] = str(fields["path"])
  cls = type(utt)
  return json.dumps({"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields},
                    ensure_ascii=False)


def utterance_from_json(line: str) -> Any:
  record = json.loads(line)
  module, _, name = record["class"].partition(":")
  cls = getattr(importlib.import_module(module), name)
  fields = dict(record["fields"], path=epath.Path(record["fields"]["path"]))
  return cls(**fields)


def write_work(path: epath.Path, lines: Iterable[str]) -> epath.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


class _ExamplesDoFn(beam.DoFn):
  """Work item -> (key, example) on the main output; a JSON record per utterance on `records`."""

  def __init__(self, split_name: str, fn: ItemFn, parse: Callable[[Any], Any] | None):
    self._split, self._fn, self._parse = split_name, fn, parse
    self._kept = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "kept")
    self._skipped = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "skipped")
    self._millis = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "kept_seconds_x1000")

  def process(self, item):
    item = self._parse(item) if self._parse else item
    for result in self._fn(item):
      if isinstance(result, str):
        self._skipped.inc()
        yield beam.pvalue.TaggedOutput("records", json.dumps({"skip": result}, ensure_ascii=False))
        continue
      key, example = result
      samples = int(example["audio"].shape[0])
      self._kept.inc()
      self._millis.inc(int(round(1000 * samples / SAMPLE_RATE)))
      yield beam.pvalue.TaggedOutput("records", json.dumps(
          {"split": self._split, "key": key, "samples": samples,
           "seconds": samples / SAMPLE_RATE}, ensure_ascii=False))
      yield key, example


class BuildSplit(beam.PTransform):
  """One split's examples, made in parallel: `(key, example)` for TFDS's Beam writer.

  work: a JSON-lines file of work items (read in parallel, `parse` turns a line into an item),
    or a short list of items (beam.Create; e.g. synthetic_speech's one (language, split)).
  fn: item -> iterable of (key, example) or skip-reason strings (picklable: it runs on workers).
  records_dir: where the per-utterance JSON records go (read back by `read_records`).
  """

  def __init__(self, split_name: str, work: epath.Path | list, fn: ItemFn,
               records_dir: epath.Path, parse: Callable[[str], Any] | None = None):
    super().__init__()
    self._split, self._work, self._fn = split_name, work, fn
    self._records, self._parse = records_dir, parse

  def expand(self, pipeline):
    name = self._split
    if isinstance(self._work, list):
      items = pipeline | f"Items_{name}" >> beam.Create(self._work)
    else:
      items = pipeline | f"ReadWork_{name}" >> beam.io.ReadFromText(str(self._work))
    results = (items
               | f"Spread_{name}" >> beam.Reshuffle()
               | f"Decode_{name}" >> beam.ParDo(
                   _ExamplesDoFn(name, self._fn, self._parse)).with_outputs("records", main="examples"))
    _ = results.records | f"WriteRecords_{name}" >> beam.io.WriteToText(
        str(self._records / name), file_name_suffix=".jsonl")
    return results.examples


def read_records(records_dir: epath.Path, report: audio_io.BuildReport
                 ) -> dict[str, list[tuple[str, int]]]:
  """Adds every record of the pipeline to `report` (kept per split, skipped reasons, sorted so
  the report does not depend on the workers' order); returns {split: [(key, samples)]}."""
  kept: dict[str, list[tuple[str, int]]] = {}
  skipped, seconds = [], []
  for path in sorted(records_dir.glob("*.jsonl*")):
    for line in path.read_text(encoding="utf-8").splitlines():
      record = json.loads(line)
      if "skip" in record:
        skipped.append(record["skip"])
      else:
        seconds.append((record["split"], record["key"], record["seconds"]))
        kept.setdefault(record["split"], []).append((record["key"], record["samples"]))
  for split, _, s in sorted(seconds):
    report.keep(split, s)
  for message in sorted(skipped):
    report.skip(message)
  return kept


def metrics_counts(pipeline_result: Any) -> dict[str, int]:
  """{counter name: committed value summed over steps and workers} of `METRICS_NAMESPACE`."""
  if pipeline_result is None:
    return {}
  query = pipeline_result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  counts: dict[str, int] = {}
  for counter in query["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + int(value or 0)
  return counts


def check_metrics(name: str, counts: dict[str, int], kept: int, skipped: int) -> None:
  """Warns when the runner's metrics disagree with the records (a runner that reports no
  committed metrics, or a lost record file); the records are what the report holds."""
  if counts and (counts.get("kept", 0) != kept or counts.get("skipped", 0) != skipped):
    _LOG.warning("%s: Beam metrics count %s kept / %s skipped, the records %d / %d", name,
                 counts.get("kept"), counts.get("skipped"), kept, skipped)


def remove(*dirs: epath.Path) -> None:
  for d in dirs:
    if d.exists():
      d.rmtree()
