"""CoVoST 2 X -> En builder on a fixture in the real layout: CoVoST TSVs beside Common Voice clips."""
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from data_pipelines.corpora import BUILDERS, read_build_report
from data_pipelines.corpora.covost2 import Covost2
from tests.fixtures.make_corpus_fixtures import write_audio, write_empty, write_truncated

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment\n"


def _make(root: Path) -> None:
  """de: a CoVoST TSV with sentence and client_id; fr: translation and split only (the transcript
  and speaker come from Common Voice's validated.tsv). Plus a truncated, an empty and a missing clip."""
  release = root / "cv-corpus-4-2019-12-10"
  de = [("de_1.mp3", "Guten Morgen.", "Good morning.", "d1", "train"),
        ("de_2.mp3", "Ein Zug.", "A train.", "d2", "train_covost"),
        ("de_3.mp3", "Das Haus.", "The house.", "d1", "dev"),
        ("de_4.mp3", "Die Stadt.", "The city.", "d3", "test"),
        ("de_5.mp3", "kaputt", "broken", "d9", "train"),
        ("de_6.mp3", "leer", "empty", "d9", "test"),
        ("de_7.mp3", "fehlt", "missing", "d9", "train")]
  for i, (clip, *_rest) in enumerate(de[:4]):
    write_audio(release / "de" / "clips" / clip, 1.5 + 0.1 * i, 48000, seed=i)
  write_truncated(release / "de" / "clips" / "de_5.mp3")
  write_empty(release / "de" / "clips" / "de_6.mp3")
  lines = ["path\tsentence\ttranslation\tclient_id\tsplit"]
  lines += ["\t".join(row) for row in de]
  (root / "covost_v2.de_en.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
  fr = [("fr_1.mp3", "Bonjour « toi", "Hello you", "f1", "train"),
        ("fr_2.mp3", "Merci.", "Thank you.", "f2", "test")]
  for i, (clip, *_rest) in enumerate(fr):
    write_audio(release / "fr" / "clips" / clip, 1.2, 44100, seed=10 + i)
  (root / "covost_v2.fr_en.tsv").write_text(
      "path\ttranslation\tsplit\n" + "".join(f"{c}\t{t}\t{s}\n" for c, _, t, _, s in fr),
      encoding="utf-8")
  (release / "fr" / "validated.tsv").write_text(
      CV_HEADER + "".join(f"{spk}\t{c}\t{src}\t2\t0\t\t\t\tfr\t\n" for c, src, _, spk, _ in fr),
      encoding="utf-8")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("covost")
  _make(root / "manual")
  builder = Covost2(config="all", data_dir=str(root / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(root / "manual"), compute_stats=tfds.download.ComputeStatsMode.SKIP))
  examples = {split: {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
              for split in builder.info.splits}
  return builder, examples


def test_splits_translations_and_transcripts(built):
  builder, examples = built
  assert BUILDERS["covost2"] is Covost2
  assert set(examples) == {"train_de", "validation_de", "test_de", "train_fr", "test_fr"}
  assert set(examples["train_de"]) == {"de/de_1.mp3", "de/de_2.mp3"}  # train + train_covost
  ex = examples["train_de"]["de/de_2.mp3"]
  assert ex["translation"].decode() == "A train." and ex["transcript"].decode() == "Ein Zug."
  assert ex["speaker"].decode() == "d2" and ex["audio"].dtype.name == "int16"
  assert abs(float(ex["duration"]) - 1.6) < 0.05
  fr = examples["train_fr"]["fr/fr_1.mp3"]  # transcript and speaker joined from validated.tsv
  assert fr["transcript"].decode() == "Bonjour « toi" and fr["speaker"].decode() == "f1"
  assert fr["translation"].decode() == "Hello you"


def test_unusable_clips_are_skipped_and_reported(built):
  builder, _ = built
  report = read_build_report(builder.data_dir)
  skipped = " ".join(report["skipped"])
  assert len(report["skipped"]) == 3
  for clip in ("de_5.mp3", "de_6.mp3", "de_7.mp3"):
    assert clip in skipped


def test_tsv_without_its_clips_is_named(tmp_path):
  (tmp_path / "covost_v2.et_en.tsv").write_text("path\ttranslation\tsplit\n")
  builder = Covost2(config="all", data_dir=str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match=r"covost_v2\.et_en\.tsv .* no et/clips/"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path), compute_stats=tfds.download.ComputeStatsMode.SKIP))


def test_tsv_without_a_covost_column_is_named(tmp_path):
  """The shared Common Voice TSV reader checks CoVoST's own columns (Common Voice's are optional)."""
  from data_pipelines.corpora.common_voice import read_tsv
  from data_pipelines.corpora.covost2 import COVOST_COLUMNS
  tsv = tmp_path / "covost_v2.et_en.tsv"
  tsv.write_text("path\tsentence\tsplit\nx.mp3\tTere.\ttrain\n")
  with pytest.raises(ValueError, match=r"covost_v2\.et_en\.tsv: expected a column 'translation'"):
    read_tsv(tsv, columns=COVOST_COLUMNS)
  tsv.write_text("path\ttranslation\tsplit\nx.mp3\tHello.\ttrain\n")
  assert read_tsv(tsv, columns=COVOST_COLUMNS) == [dict(path="x.mp3", translation="Hello.",
                                                         split="train")]

def test_translation_task_reads_the_translation_field(built):
  """The AST task's targets and labels come from CoVoST's translation, not the transcript."""
  from xlsr_jax.downstream import data as data_lib
  from xlsr_jax.downstream.translation import task as translation
  from xlsr_jax.downstream.translation.text import train_tokenizer
  builder, _ = built
  index = data_lib.index_split(builder, ["train_de"])
  assert sorted(translation.targets(index)) == ["A train.", "Good morning."]
  tok = train_tokenizer(["Good morning.", "A train.", "The house."] * 20, 40)
  labeler = translation.TranslationLabeler(tok, 16)
  batch = next(data_lib.train_iterator(builder, ["train_de"], labeler, batch_size=2,
                                       max_samples=40_000, seed=0, drop_longer=True))
  decoded = sorted(tok.decode(row[row != -100]) for row in batch["labels"])
  assert decoded == ["A train.", "Good morning."] and list(batch["label"]) == [0, 0]


def test_cli_builds_it(tmp_path):
  from data_pipelines.corpora import __main__ as cli
  _make(tmp_path / "manual")
  out = cli.main(["covost2", f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'data'}",
                  "--languages=fr"])  # returns the dataset directory
  builder = tfds.builder_from_directory(str(out))
  assert set(builder.info.splits) == {"train_fr", "test_fr"}
