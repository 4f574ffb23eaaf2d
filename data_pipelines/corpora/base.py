"""What every corpus builder shares: the config, the utterance record, decode-or-skip, the report.

A corpus builder only says where the utterances are (`_discover` the languages under manual_dir,
then list each language's `Utterance`s); this module turns them into examples of the shared
schema (`features.speech_features`), one split per (split, language), e.g. "train_en".

Files that cannot be used (undecodable, truncated header, empty, shorter than
`min_duration_s`, longer than `max_duration_s`, stored below `min_sample_rate`, listed but
missing) are skipped with a logging warning naming the file and the reason and counted in a
`BuildReport`; the build never stops for them. At the end the report is written next to the
data as `build_report.json`, its counts and the kept hours per split go into the DatasetInfo
metadata (`info.metadata["hours"]`, `info.metadata["build_report"]`), and its summary is logged.
A split none of whose files is usable is left out (TFDS cannot write an empty split) and listed
in the report's `empty_splits`.

Every build also writes each split's utterance-length index (`build_outputs.py`) and records the
shard files per split in the report (`shards`). With TFDS's `beam_runner` / `beam_options` (e.g.
`python -m data_pipelines.corpora ... --beam_pipeline_options=...`) the same build runs as an
Apache Beam pipeline (`data_pipelines/beam_build.py`): the utterance list is made here on the
driver, decoding, resampling and encoding run on the workers, and the examples, split counts and
report are the same as the single-process build's (skip reasons sorted).
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from data_pipelines import audio_io, build_outputs
from data_pipelines.corpora import manifest_check
from data_pipelines.features import SAMPLE_RATE, language_split_name, speech_features

_LOG = logging.getLogger(__name__)
REPORT_FILENAME = "build_report.json"


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  """Options shared by the corpus builders (the name picks the output folder: keep it unique).

  languages: language codes as the corpus names them; empty means every language found.
  min_duration_s / max_duration_s: utterances outside this range are skipped (max None: no limit).
    0.5 s by default: shorter clips give the 20 ms-frame encoder under 25 frames, nothing to learn
    from; the 2 s pretraining minimum is the input pipeline's job, since fine-tuning keeps shorter.
  min_sample_rate: files stored below this rate are skipped (a 4 kHz file is not wideband speech,
    more often a broken header); anything at or above it is resampled to 16 kHz.
  validation_fraction: share of a corpus without an official validation set held out for one,
    by a hash of the recording group (session, video), so the choice is the same on every build.
  num_workers: decoding threads (libsndfile and soxr do most of their work outside the GIL:
    1.4x with 2 threads on a busy 2-core machine); 1 decodes inline.
  """
  languages: tuple[str, ...] = ()
  min_duration_s: float = 0.5
  max_duration_s: float | None = None
  min_sample_rate: int = 8000
  validation_fraction: float = 0.0
  num_workers: int = 1


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One utterance to decode: where its audio is and what goes with it.

  `start_s` / `end_s` cut a segment out of a longer recording (BABEL); the default is the whole file.
  """
  split: str
  language: str
  path: epath.Path
  id: str
  transcript: str = ""
  speaker: str = ""
  start_s: float = 0.0
  end_s: float | None = None

  def extra_features(self) -> dict[str, Any]:
    """Features of this utterance beyond the shared schema (a subclass's, e.g. a translation)."""
    return {}


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """What decoding one utterance needs from the builder (picklable: Beam workers get a copy)."""
  corpus: str
  min_duration_s: float
  max_duration_s: float | None
  min_sample_rate: int


def decode_utterance(utt: Utterance, options: DecodeOptions) -> dict | str:
  """The example of `utt` in the shared schema, or the reason it cannot be used (thread-safe)."""
  label = str(utt.path)
  if utt.end_s is not None:
    label += f" [{utt.start_s:.2f}-{utt.end_s:.2f} s]"
  try:
    if not utt.path.exists():
      return f"{label}: file not found"
    if utt.path.stat().length == 0:
      return f"{label}: empty file (0 bytes)"
    audio = audio_io.decode_audio(
        _local_or_bytes(utt.path), name=label, start_s=utt.start_s, end_s=utt.end_s,
        min_samples=max(1, int(round(options.min_duration_s * SAMPLE_RATE))),
        min_source_rate=options.min_sample_rate)
  except audio_io.AudioDecodeError as e:
    return str(e)
  except OSError as e:  # unreadable file, permissions, a remote read that failed
    return f"{label}: cannot read ({type(e).__name__}: {e})"
  duration = audio.shape[0] / SAMPLE_RATE
  if options.max_duration_s is not None and duration > options.max_duration_s:
    return f"{label}: {duration:.2f} s, longer than the maximum {options.max_duration_s} s"
  return {"audio": audio, "language": utt.language, "corpus": options.corpus,
          "speaker": utt.speaker, "transcript": utt.transcript, "duration": duration, "id": utt.id,
          **utt.extra_features()}


def beam_decode(utt: Utterance, options: DecodeOptions) -> Iterator[tuple[str, dict] | str]:
  """A Beam worker's step (`beam_build.BuildSplit`): `(id, example)`, or the skip reason."""
  result = decode_utterance(utt, options)
  yield result if isinstance(result, str) else (result["id"], result)


def holdout_fraction(group: str) -> float:
  """A stable number in [0, 1) for `group`, the same on every machine and Python process."""
  digest = hashlib.md5(group.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def train_or_validation(group: str, validation_fraction: float) -> str:
  """"validation" for about `validation_fraction` of all groups (by their hash), else "train"."""
  return "validation" if holdout_fraction(group) < validation_fraction else "train"


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], num_workers: int) -> Iterator[Any]:
  """`map(fn, items)` in order, run on `num_workers` threads with at most 2 * num_workers in flight."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * num_workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _local_or_bytes(path: epath.Path) -> str | bytes:
  """What soundfile can open: the local path, or the bytes of a remote (gs://...) file."""
  text = os.fspath(path)
  return path.read_bytes() if "://" in text else text


class CorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the corpus builders: subclasses give `_discover` and `_utterances`.

  Not registered with TFDS (TFDS has its own `common_voice`): build with the class or
  `python -m data_pipelines.corpora`; read the result from its files with
  `tfds.builder("<name>/<config>", data_dir=...)` or `tfds.builder_from_directory(...)`.
  Every utterance record of the build is listed in memory before decoding starts (a few hundred
  bytes each): build the largest corpora (VoxPopuli 100k/400k) one language per process.
  """

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release: the shared XLS-R speech schema, per-language splits.",
      "2.0.0": "Audio stored as zlib-compressed int16 bytes (features.audio_feature), about 1.7 "
               "bytes a sample instead of about 5.5 as int64 varints; readers get the same int16 "
               "[samples].",
  }
  BUILDER_CONFIGS = [CorpusConfig(name="all", description="Every language found in manual_dir.")]
  HOMEPAGE = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or "").strip(), features=speech_features(),
        homepage=self.HOMEPAGE, metadata=tfds.core.MetadataDict())

  @abc.abstractmethod
  def _discover(self, manual_dir: epath.Path) -> Mapping[str, Any]:
    """`{language: where its data is}` for every language found under `manual_dir`."""

  @abc.abstractmethod
  def _utterances(self, language: str, source: Any) -> Iterable[Utterance]:
    """The utterances of one language, from what `_discover` returned for it."""

  def _skip(self, message: str) -> None:
    """Logs a skipped file (the message names it and the reason) and counts it in the report."""
    if not getattr(self, "_checking_manifest", False):
      _LOG.warning("%s: skipping %s", self.name, message)
    self._report.skip(message)

  def download_and_prepare(self, *args, download_config=None, **kwargs):
    """TFDS's, but an existing build whose utterance list no longer matches manual_dir is an error
    (`manifest_check.ManifestChanged` naming the difference) instead of being reused silently."""
    manual_dir = getattr(download_config, "manual_dir", None)
    mode = getattr(download_config, "download_mode", None)
    overwrite = mode == tfds.download.GenerateMode.FORCE_REDOWNLOAD
    if manual_dir and not overwrite and self.is_prepared():
      self._check_manifest(epath.Path(manual_dir))
    return super().download_and_prepare(*args, download_config=download_config, **kwargs)

  def _check_manifest(self, manual_dir: epath.Path) -> None:
    path = epath.Path(self.data_dir) / REPORT_FILENAME
    built = json.loads(path.read_text()).get("manifest") if path.exists() else None
    if built is None:
      _LOG.warning("%s: %s records no manifest fingerprint (an older build): not checked against %s",
                   self.name, path, manual_dir)
      return
    self._report, self._checking_manifest = audio_io.BuildReport(), True
    try:
      now = manifest_check.fingerprint(self._selected_utterances(manual_dir))
    finally:
      self._checking_manifest = False
    changed = manifest_check.difference(built, now)
    if changed:
      raise manifest_check.ManifestChanged(
          f"{self.name}: the utterances under {manual_dir} changed since {self.data_dir} was built "
          f"({changed}); rebuild it (python -m data_pipelines.corpora ... --overwrite deletes the old "
          f"build) or build under another --config_name")

  def _selected_utterances(self, manual_dir: epath.Path) -> list[Utterance]:
    available = self._discover(manual_dir)
    if not available:
      raise FileNotFoundError(
          f"{self.name}: found no language under {manual_dir}; expected this layout:\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    wanted = self.builder_config.languages or tuple(sorted(available))
    missing = [lang for lang in wanted if lang not in available]
    if missing:
      raise ValueError(
          f"{self.name}: config {self.builder_config.name!r} asks for languages {missing} that "
          f"are not under {manual_dir}; found: {sorted(available)}")
    utterances = []
    for lang in wanted:
      utterances.extend(self._utterances(lang, available[lang]))
    return utterances

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    self._report = audio_io.BuildReport()
    by_split: dict[str, list[Utterance]] = {}
    languages_of: dict[str, set[str]] = {}
    selected = self._selected_utterances(manual_dir)
    self._manifest = manifest_check.fingerprint(selected)
    for utt in selected:
      try:
        name = language_split_name(utt.split, utt.language)
      except ValueError as e:  # a row's unusable language code: skipped and counted like a bad file
        self._skip(f"{utt.path}: {e}")
        continue
      by_split.setdefault(name, []).append(utt)
      languages_of.setdefault(name, set()).add(utt.language)
    clashes = {name: sorted(langs) for name, langs in languages_of.items() if len(langs) > 1}
    if clashes:
      raise ValueError(f"{self.name}: languages that map to the same split name: {clashes}")
    generators = {}
    for name, utterances in sorted(by_split.items()):
      first, rest = self._first_usable(utterances)
      if first is None:
        _LOG.warning("%s: no usable audio among the %d files of split %s; leaving it out",
                     self.name, len(utterances), name)
        self._report.empty_splits.append(name)
        continue
      if getattr(self, "_beam", False):  # the first usable one is decoded again on a worker
        generators[name] = self._beam_split(name, utterances[len(utterances) - len(rest) - 1:])
      else:
        generators[name] = self._generate_examples(name, first, rest)
    if not generators:
      raise ValueError(
          f"{self.name}: none of the files under {manual_dir} is usable\n{self._report.summary()}")
    return generators

  def _first_usable(self, utterances: list[Utterance]) -> tuple[dict | None, list[Utterance]]:
    """Decodes in order until one utterance is usable: (its example or None, the ones after it).

    TFDS fails on a split that yields nothing, so each split is checked before it is handed over.
    """
    for i, utt in enumerate(utterances):
      example = self._example_or_skip(self._decode(utt))
      if example is not None:
        return example, utterances[i + 1:]
    return None, []

  def _decode_options(self) -> DecodeOptions:
    config = self.builder_config
    return DecodeOptions(corpus=self.name, min_duration_s=config.min_duration_s,
                         max_duration_s=config.max_duration_s,
                         min_sample_rate=config.min_sample_rate)

  def _decode(self, utt: Utterance) -> dict | str:
    """The example of `utt` in the shared schema, or the reason it cannot be used (thread-safe)."""
    return decode_utterance(utt, self._decode_options())

  def _example_or_skip(self, result: dict | str) -> dict | None:
    if isinstance(result, str):
      self._skip(result)
      return None
    return result

  def _generate_examples(self, split_name: str, first: dict, rest: list[Utterance]):
    """Yields (id, example) for `first` and every usable utterance of `rest`, in order."""
    self._keep(split_name, first)
    yield first["id"], first
    for result in ordered_map(self._decode, rest, self.builder_config.num_workers):
      example = self._example_or_skip(result)
      if example is not None:
        self._keep(split_name, example)
        yield example["id"], example

  def _keep(self, split_name: str, example: dict) -> None:
    self._report.keep(split_name, float(example["duration"]))
    self._kept_lengths.setdefault(split_name, []).append(
        (example["id"], int(example["audio"].shape[0])))

  def _beam_split(self, split_name: str, utterances: list[Utterance]):
    """The split as a Beam PTransform: its utterances written as a work list, decoded on workers."""
    from data_pipelines import beam_build  # only with apache-beam installed (requirements-beam.txt)
    work = beam_build.write_work(epath.Path(self.data_dir) / beam_build.WORK_DIR / f"{split_name}.jsonl",
                                 map(beam_build.utterance_to_json, utterances))
    return beam_build.BuildSplit(
        split_name, work, functools.partial(beam_decode, options=self._decode_options()),
        epath.Path(self.data_dir) / beam_build.RECORDS_DIR, parse=beam_build.utterance_from_json)

  def _process_pipeline_result(self, pipeline_result) -> None:
    from data_pipelines import beam_build
    self._beam_metrics = beam_build.metrics_counts(pipeline_result)

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self._beam = build_outputs.beam_requested(download_config)
    self._kept_lengths: dict[str, list[tuple[str, int]]] = {}
    self._beam_metrics: dict[str, int] = {}
    super()._download_and_prepare(dl_manager, download_config)
    report = getattr(self, "_report", None)
    if report is None:  # nothing was generated (max_examples_per_split == 0)
      return
    if self._beam:
      self._kept_lengths = build_outputs.collect_beam_records(self.name, epath.Path(self.data_dir), report,
                                                self._beam_metrics)
    shards = build_outputs.write_length_indexes(self, self._kept_lengths)
    self.info.metadata["hours"] = report.hours()
    self.info.metadata["build_report"] = {
        "kept": report.kept, "skipped": len(report.skipped), "empty_splits": report.empty_splits}
    path = epath.Path(self.data_dir) / REPORT_FILENAME
    path.write_text(json.dumps(dict(
        report.to_dict(), manifest=getattr(self, "_manifest", None), shards=shards,
        beam_metrics=self._beam_metrics or None), indent=1, ensure_ascii=False))
    _LOG.info("%s build report (%s):\n%s", self.name, path.name, report.summary())


def read_build_report(dataset_dir: str | os.PathLike) -> dict:
  """The report a build wrote into `dataset_dir` (`<data_dir>/<name>/<config>/<version>`)."""
  path = epath.Path(dataset_dir) / REPORT_FILENAME
  if not path.exists():
    raise FileNotFoundError(
        f"no {REPORT_FILENAME} in {dataset_dir}: was it built by a CorpusBuilder?")
  return json.loads(path.read_text())
