"""Mozilla Common Voice, read from an extracted release: `<lang>/clips/*.mp3` plus `<lang>/*.tsv`.

The split TSVs (train, dev, test) list the clips with columns client_id, path, sentence, ...;
dev becomes the "validation" split. Sentences contain unbalanced quotes, so the TSVs are read
without quote handling (as TFDS's and Hugging Face's Common Voice readers do). client_id is
the speaker. With `train_tsv="validated"` the train split is validated.tsv minus every clip of
dev.tsv and test.tsv: several times more audio for pretraining, still disjoint from evaluation.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator

from etils import epath

from data_pipelines.corpora import base

_SPLIT_TSVS = {"train": "train", "validation": "dev", "test": "test"}


@dataclasses.dataclass(eq=False)
class CommonVoiceConfig(base.CorpusConfig):
  """`train_tsv`: "train" (the official train split) or "validated" (validated minus dev and test)."""
  train_tsv: str = "train"


def read_tsv(path: epath.Path, columns: tuple[str, ...] = ("client_id", "path", "sentence")
             ) -> list[dict[str, str]]:
  """Rows of a Common Voice TSV as dicts (no quote handling: sentences contain stray quotes), or
  of a TSV made from one (CoVoST 2's); a missing column of `columns` is an error naming the file."""
  lines = path.read_text(encoding="utf-8").splitlines()
  rows = list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
  for column in columns:
    if rows and column not in rows[0]:
      raise ValueError(f"{path}: expected a column {column!r}, found columns {list(rows[0])}")
  return rows


class CommonVoice(base.CorpusBuilder, skip_registration=True):
  """Mozilla Common Voice (read speech, CC0), any release, languages as its folders name them."""

  HOMEPAGE = "https://commonvoice.mozilla.org/datasets"
  BUILDER_CONFIGS = [
      CommonVoiceConfig(name="all", description="Every language found, official train split."),
      CommonVoiceConfig(name="all_validated", train_tsv="validated",
                        description="Every language found, train = validated minus dev and test."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the per-language archives of one Common Voice release from
  https://commonvoice.mozilla.org/datasets and extract them into manual_dir, which then holds
  (the release folder cv-corpus-<version>/ may be kept as one level in between):
    <manual_dir>/<lang>/clips/*.mp3
    <manual_dir>/<lang>/train.tsv, dev.tsv, test.tsv (and validated.tsv for train_tsv="validated")
  <lang> is the release's folder name (en, pt, zh-CN, ...); it becomes the language field.
  """

  def _discover(self, manual_dir: epath.Path) -> dict[str, epath.Path]:
    candidates = [manual_dir] + sorted(p for p in manual_dir.glob("cv-corpus-*") if p.is_dir())
    found: dict[str, epath.Path] = {}
    for parent in candidates:
      for lang_dir in sorted(parent.iterdir()):
        if (lang_dir / "clips").is_dir():
          if lang_dir.name in found:
            raise ValueError(f"common_voice: language {lang_dir.name!r} is in both "
                             f"{found[lang_dir.name]} and {lang_dir}; keep one release")
          found[lang_dir.name] = lang_dir
    return found

  def _utterances(self, language: str, lang_dir: epath.Path) -> Iterator[base.Utterance]:
    train_tsv = self.builder_config.train_tsv
    if train_tsv not in ("train", "validated"):
      raise ValueError(f"common_voice: train_tsv must be 'train' or 'validated', found {train_tsv!r}")
    rows = {}
    for split, stem in _SPLIT_TSVS.items():
      path = lang_dir / f"{stem}.tsv"
      rows[split] = read_tsv(path) if path.exists() else []
    if train_tsv == "validated":
      held_out = {r["path"] for r in rows["validation"] + rows["test"]}
      path = lang_dir / "validated.tsv"
      if not path.exists():
        raise FileNotFoundError(f"common_voice: train_tsv='validated' but {path} does not exist")
      rows["train"] = [r for r in read_tsv(path) if r["path"] not in held_out]
    for split, split_rows in rows.items():
      for row in split_rows:
        clip = clip_name(row)
        yield base.Utterance(split=split, language=language, path=lang_dir / "clips" / clip,
                             id=f"{language}/{clip}", transcript=row["sentence"].strip(),
                             speaker=row["client_id"])


def clip_name(row: dict[str, str]) -> str:
  """The clip's file name in <lang>/clips/ from a row's path column (older releases omit .mp3)."""
  return row["path"] if row["path"].endswith(".mp3") else row["path"] + ".mp3"
