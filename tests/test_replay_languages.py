"""New languages in a continued run: replay weights, and the per-language validation report."""
import json
import os

import numpy as np
import pytest

from data_pipelines import input_pipeline as ip
from data_pipelines.sampling import two_level_weights
from tests.configs import small_config
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.training import language_metrics, config_checks

NEW = (("toy_speech/alpha", ("fr", "sw")),)
REPLAY = (("toy_speech/alpha", ("en",)), ("toy_speech/beta", None))


def _config(toy_dir, **overrides):
  values = dict(data_dir=toy_dir, sources=NEW, replay_sources=REPLAY, replay_fraction=0.3,
                min_sample_size=2_000, max_sample_size=6_000, global_batch_size=8, seed=3,
                prefetch_batches=0)
  return ip.PipelineConfig(**{**values, **overrides})


def test_replay_gets_its_share_balanced_inside_each_group(toy_corpus_dir):
  config = _config(toy_corpus_dir)
  sources = ip.resolve_sources(config)
  weights = {(s.corpus, s.language): s.weight for s in sources}
  hours = {(s.corpus, s.language): s.hours for s in sources}
  new = two_level_weights({k: h for k, h in hours.items() if k[1] in ("fr", "sw")
                           and k[0] == "toy_speech/alpha"}, 0.5)
  replay = two_level_weights({k: h for k, h in hours.items() if k not in new}, 0.5)
  for k, w in new.items():
    assert weights[k] == pytest.approx(0.7 * w)
  for k, w in replay.items():
    assert weights[k] == pytest.approx(0.3 * w)
  assert sorted({s.corpus_id for s in sources}) == [0, 1, 2]  # sources, then replay sources
  # The batches follow it: about 30% of the rows from the replayed corpora / languages.
  it = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  rows = [next(it) for _ in range(40)]
  it.close()
  replayed = np.mean(np.concatenate([b["corpus_id"] for b in rows]) >= 1)
  assert 0.2 < replayed < 0.4, replayed


def test_replay_keys_are_validated():
  c = small_config()
  c.data.replay_fraction = 0.2
  with pytest.raises(ConfigError, match="data.replay_sources .*when data.replay_fraction > 0"):
    config_checks.validate(c)
  c.data.replay_sources = [["synthetic_speech/default", ["en"]]]
  c.data.replay_fraction = 1.0
  with pytest.raises(ConfigError, match=r"data.replay_fraction=1.0: expected a value in \[0.0, 1.0\)"):
    config_checks.validate(c)
  c.data.replay_fraction = 0.2
  c.train.eval_language_batches, c.train.eval_every = 2, 0
  with pytest.raises(ConfigError, match="train.eval_every > 0 when train.eval_language_batches"):
    config_checks.validate(c)
  c.train.eval_every = 5
  config_checks.validate(c)
  c.train.init_exclude = ["quantizer/("]
  with pytest.raises(ConfigError, match=r"train.init_exclude.*not a regular expression: missing \)"):
    config_checks.validate(c)


def test_each_language_alone_named_by_corpus_when_ambiguous(toy_corpus_dir):
  c = small_config()
  c.data.sources = [list(s) for s in NEW]
  c.data.replay_sources = [["toy_speech/alpha", ["en"]], ["toy_speech/beta", None]]
  pipelines = language_metrics.language_pipelines(c, _config(toy_corpus_dir))
  assert sorted(pipelines) == ["fr", "pt_br", "sw", "toy_speech/alpha:en", "toy_speech/beta:en", "yo"]
  assert pipelines["fr"].sources == (("toy_speech/alpha", ("fr",)),)
  assert pipelines["fr"].replay_sources == () and pipelines["fr"].replay_fraction == 0.0


def test_report_has_every_language_and_metric(tmp_path):
  history = [dict(step=2, loss=1.0)]
  for step, loss in ((4, 3.0), (8, 2.0)):
    history.append(dict(step=step, eval_loss=loss))
    history.append({"step": step, **{f"eval_language/{lang}/{m}": v + step
                                     for lang in ("en", "fr") for m, v in
                                     (("contrastive_loss", 1.0), ("accuracy", 0.1),
                                      ("code_perplexity", 5.0))}})
  path = language_metrics.write_report(str(tmp_path), history)
  assert path == str(tmp_path / "language_metrics.png") and os.path.getsize(path) > 1000
  table = json.loads((tmp_path / "language_metrics.json").read_text())
  assert table["steps"] == [4, 8]
  assert table["languages"]["fr"]["contrastive_loss"] == [5.0, 9.0]
  assert set(table["languages"]["en"]) == set(language_metrics.METRICS)
  assert language_metrics.write_report(str(tmp_path / "none"), history[:1]) is None


def test_console_line_lists_each_language():
  flat = language_metrics.flatten({"fr": {"contrastive_loss": 2.5, "accuracy": 0.25, "num_masked": 9.0},
                                   "en": {"contrastive_loss": 3.0, "accuracy": 0.125}})
  assert "fr/num_masked" not in flat
  assert language_metrics.console_line(4, flat) == (
      "eval per language step 4 (contrastive loss, accuracy): en 3.000 (acc 0.12), fr 2.500 (acc 0.25)")
