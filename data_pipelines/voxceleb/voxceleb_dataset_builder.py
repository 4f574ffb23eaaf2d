"""VoxCeleb1 speaker identification in the shared schema, built on TFDS's own `voxceleb` builder.

TFDS's builder (`tensorflow_datasets/audio/voxceleb.py`) reads `vox_dev_wav.zip` from manual_dir,
extracts it, downloads the identification split list `iden_split.txt` at build time, and writes
its own schema (WAV audio, a ClassLabel, the video id) as plain train/validation/test splits.
`Voxceleb` subclasses it, keeping its archive name, split-list URL, homepage and citation and its
extract-then-read approach, and changes what this project needs:
  * offline: `iden_split.txt` is read from manual_dir when a copy is there and downloaded only
    otherwise; when neither works the build stops with an error naming the expected path;
  * the shared schema (`data_pipelines.features`): 16 kHz int16 audio, speaker "id10001",
    corpus "voxceleb", transcript "", id "id10001/1zcIwhmdeo4/00001.wav" (the split list's path,
    TFDS's key) and language "und" (ISO 639-2 "undetermined": VoxCeleb has no language labels,
    and the split names need a language);
  * splits named as for every corpus: `train_und`, `validation_und`, `test_und` (the split
    list's groups 1, 2, 3), so the input pipeline and `features.languages_in_splits` read it;
  * unusable or missing files are skipped, logged and counted in `build_report.json`
    (`base.CorpusBuilder`); TFDS's builder drops missing files silently;
  * the official release's two archives: `vox1_dev_wav.zip` (1,211 speakers) and
    `vox1_test_wav.zip` (40 speakers) are read beside TFDS's `vox_dev_wav.zip`, as is a `wav/`
    folder extracted by hand. The identification protocol uses all 1,251 speakers.
Read the result with `tfds.builder("voxceleb/all", data_dir=...)` (TFDS's registered class has no
"all" config, so this loads from the files) or `tfds.builder_from_directory(...)`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.audio import voxceleb as tfds_voxceleb

from data_pipelines.corpora import base
from data_pipelines.features import speech_features

_LOG = logging.getLogger(__name__)

LANGUAGE = "und"  # ISO 639-2 "undetermined": the language field and the split names' suffix
SPLIT_LIST_FILENAME = "iden_split.txt"
SPLIT_OF_GROUP = {"1": "train", "2": "validation", "3": "test"}
ARCHIVES = ("vox_dev_wav.zip", "vox1_dev_wav.zip", "vox1_test_wav.zip")  # TFDS's name, the release's


def read_split_list(text: str, where: str) -> list[tuple[str, str]]:
  """`(split, relative wav path)` per line of iden_split.txt ("1 id10001/1zcIwhmdeo4/00001.wav").

  Blank lines are ignored. Raises ValueError naming `where` and the line for an unknown group, a
  path not shaped `<speaker>/<video>/<file>.wav`, or a path listed twice.
  """
  entries, line_of = [], {}
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 2 or fields[0] not in SPLIT_OF_GROUP:
      raise ValueError(f"{where}:{line_no}: expected '<1|2|3> <speaker>/<video>/<file>.wav', "
                       f"found {line.strip()!r}")
    path = fields[1]
    parts = path.split("/")
    if len(parts) != 3 or not all(parts) or not path.endswith(".wav"):
      raise ValueError(f"{where}:{line_no}: path {path!r} is not <speaker>/<video>/<file>.wav")
    if path in line_of:
      raise ValueError(f"{where}:{line_no}: {path} is listed again (first on line {line_of[path]})")
    line_of[path] = line_no
    entries.append((SPLIT_OF_GROUP[fields[0]], path))
  return entries


def speaker_of(relative_path: str) -> str:
  """`id10001/1zcIwhmdeo4/00001.wav` -> `id10001`."""
  return relative_path.split("/", 1)[0]


@dataclasses.dataclass(frozen=True)
class Sources:
  """Where the build reads from: the `wav/` folders (in order of preference) and the split list."""
  wav_roots: tuple[epath.Path, ...]
  split_list: epath.Path


class Voxceleb(base.CorpusBuilder, tfds_voxceleb.Voxceleb, skip_registration=True):
  """VoxCeleb1 speaker identification (1,251 celebrities, YouTube interviews, ~352 h)."""

  HOMEPAGE = tfds_voxceleb._HOMEPAGE
  SPLIT_LIST_URL = tfds_voxceleb.IDEN_SPLITS_URL
  BUILDER_CONFIGS = [base.CorpusConfig(
      name="all", description="The identification protocol's train/validation/test lists.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Register at {tfds_voxceleb._HOMEPAGE} and put into manual_dir:
    <manual_dir>/vox1_dev_wav.zip and vox1_test_wav.zip (the release's archives: wav/<speaker>/
      <video>/<nnnnn>.wav), or TFDS's vox_dev_wav.zip, or a wav/ folder they were extracted to
    <manual_dir>/{SPLIT_LIST_FILENAME} (the identification split list; downloaded from
      {tfds_voxceleb.IDEN_SPLITS_URL} when it is not there)
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or "").strip(), features=speech_features(),
        homepage=self.HOMEPAGE, citation=tfds_voxceleb._CITATION,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self._dl_manager = dl_manager  # `_discover` fetches the split list and extracts through it
    return super()._split_generators(dl_manager)

  def _discover(self, manual_dir: epath.Path) -> dict[str, Sources]:
    """`{"und": Sources}`; the split list is found before the (long) extraction starts."""
    extracted = manual_dir / "wav"
    archives = [manual_dir / name for name in ARCHIVES if (manual_dir / name).exists()]
    if not archives and not extracted.is_dir():
      raise FileNotFoundError(
          f"voxceleb: none of {', '.join(ARCHIVES)} nor a wav/ folder is in {manual_dir}; "
          f"expected:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    split_list = self._split_list(manual_dir)
    roots = [extracted] if extracted.is_dir() else []
    roots += [self._extract(archive) for archive in archives]
    return {LANGUAGE: Sources(wav_roots=tuple(roots), split_list=split_list)}

  def _split_list(self, manual_dir: epath.Path) -> epath.Path:
    """manual_dir's iden_split.txt, else the downloaded one; an error naming both when neither."""
    copy = manual_dir / SPLIT_LIST_FILENAME
    if copy.exists():
      _LOG.info("voxceleb: split list from %s", copy)
      return copy
    try:
      return epath.Path(self._dl_manager.download(self.SPLIT_LIST_URL))
    except Exception as e:  # no network, a dead URL, a proxy page: all end the same way
      raise FileNotFoundError(
          f"voxceleb: no split list at {copy}, and downloading {self.SPLIT_LIST_URL} failed "
          f"({type(e).__name__}: {e}); put a copy of {SPLIT_LIST_FILENAME} at {copy}") from e

  def _extract(self, archive: epath.Path) -> epath.Path:
    """The `wav/` folder inside `archive`, extracted (once) by the download manager."""
    root = epath.Path(self._dl_manager.extract(archive)) / "wav"
    if not root.is_dir():
      raise ValueError(f"voxceleb: {archive} has no top-level wav/ folder")
    return root

  def _utterances(self, language: str, sources: Sources) -> Iterator[base.Utterance]:
    """Every file of the split list, in its order, under the first wav/ folder with its speaker."""
    root_of: dict[str, epath.Path] = {}
    for root in sources.wav_roots:
      for speaker_dir in root.iterdir():
        if speaker_dir.is_dir():
          root_of.setdefault(speaker_dir.name, root)
    text = sources.split_list.read_text(encoding="utf-8")
    for split, relative in read_split_list(text, str(sources.split_list)):
      speaker = speaker_of(relative)
      root = root_of.get(speaker, sources.wav_roots[0])  # not found: reported as a missing file
      yield base.Utterance(split=split, language=language, path=root / relative, id=relative,
                           speaker=speaker)
