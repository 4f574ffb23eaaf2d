"""Duration buckets: assignment, batch sizes, n^alpha proportions, and the bucketed tf.data pipeline."""
import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import buckets
from data_pipelines import input_pipeline as ip
from tests import toy_corpus

SOURCES = (("toy_speech/alpha", None), ("toy_speech/beta", None))
LENGTHS = (2_000, 4_000, 8_000)  # toy utterances have 800..12,000 samples
ROWS = (8, 4, 2)  # 16,000 samples of audio per step in every bucket


@pytest.fixture(scope="module")
def toy_dir(toy_corpus_dir):
  return toy_corpus_dir


def make_config(toy_dir, **overrides):
  values = dict(data_dir=toy_dir, sources=SOURCES, min_sample_size=2_000, max_sample_size=8_000,
                global_batch_size=4, seed=7, prefetch_batches=0, keep_ids=True,
                bucket_lengths=LENGTHS, bucket_batch_sizes=ROWS)
  return ip.PipelineConfig(**{**values, **overrides})


def toy_lengths():
  """{id: length} of every toy "train" utterance."""
  return {toy_corpus.utterance_id(c, l, i): toy_corpus.utterance_length(c, l, i)
          for c, counts in toy_corpus.LANGUAGE_COUNTS.items() for l, n in counts.items()
          for i in range(n)}


def test_assign_crop_and_pad_modes():
  lengths = np.array([500, 1_999, 2_000, 3_999, 4_000, 7_000, 8_000, 50_000])
  crop = buckets.BucketSpec(LENGTHS, ROWS, "crop", min_sample_size=1_000)
  np.testing.assert_array_equal(buckets.assign(lengths, crop), [-1, -1, 0, 0, 1, 1, 2, 2])
  pad = buckets.BucketSpec(LENGTHS, ROWS, "pad", min_sample_size=1_000)
  np.testing.assert_array_equal(buckets.assign(lengths, pad), [-1, 0, 0, 1, 1, 2, 2, 2])


def test_batch_sizes_keep_audio_seconds_and_divide_the_devices():
  assert buckets.bucket_batch_sizes([2, 4, 8, 12, 16, 20], 1600) == (800, 400, 200, 133, 100, 80)
  sizes = buckets.bucket_batch_sizes([2, 4, 8, 12, 16, 20], 1600, multiple=8)
  assert sizes == (800, 400, 200, 136, 96, 80)
  assert buckets.bucket_batch_sizes([20], 10, multiple=8) == (8,)  # at least one multiple
  spec = buckets.make_spec([4, 2], 16, mode="pad")
  assert spec.lengths == (32_000, 64_000) and spec.batch_sizes == (8, 4)
  with pytest.raises(ValueError, match="mode"):
    buckets.make_spec([2], 16, mode="stretch")


def test_bucket_sampling_keeps_source_weights_exactly():
  """Analytically: step share P(b)/B_b and within-bucket w_s f_s(b)/P(b) give every source w_s."""
  spec = buckets.BucketSpec((10, 20, 40), (8, 4, 2))
  weights = {"a": 0.5, "b": 0.3, "c": 0.2}
  counts = {"a": np.array([10, 0, 1]), "b": np.array([1, 1, 8]), "c": np.array([0, 5, 5])}
  shares = buckets.source_bucket_shares(counts)
  got = buckets.expected_source_shares(weights, shares, spec)
  for s, w in weights.items():
    assert got[s] == pytest.approx(w, abs=1e-12)


def test_split_lengths_index_matches_the_data_and_is_cached(toy_dir):
  builder = tfds.builder("toy_speech/alpha", data_dir=toy_dir)
  lengths = ip.split_lengths(builder, "train_fr")
  want = [toy_corpus.utterance_length("alpha", "fr", i) for i in range(12)]
  assert sorted(lengths.tolist()) == sorted(want)
  assert len(lengths) == builder.info.splits["train_fr"].num_examples
  again = ip.split_lengths(builder, "train_fr")  # from the cache file
  np.testing.assert_array_equal(again, lengths)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_rows_belong_to_their_bucket(toy_dir, mode):
  lengths = toy_lengths()
  # Pad mode: utterances from 1,000 samples pad up to the 2,000-sample bucket.
  config = make_config(toy_dir, bucket_mode=mode, min_sample_size=2_000 if mode == "crop" else 1_000)
  it = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  seen = set()
  for _ in range(30):
    batch = next(it)
    b = int(batch["bucket"][0])
    seen.add(b)
    assert np.all(batch["bucket"] == b)
    assert batch["waveform"].shape == (ROWS[b], LENGTHS[b])
    for row, uid in enumerate(batch["id"]):
      n = lengths[uid.decode()]
      got = int(batch["lengths"][row])
      if mode == "crop":  # the longest bucket it fills, cropped to it: no padding at all
        assert got == LENGTHS[b] and n >= LENGTHS[b] and (b == 2 or n < LENGTHS[b + 1])
      else:  # the shortest bucket it fits, padded up (or cropped to the longest)
        assert got == min(n, LENGTHS[b]) and n >= 1_000 and (b == 0 or n > LENGTHS[b - 1])
        assert np.all(batch["waveform"][row, got:] == 0)
  assert seen == {0, 1, 2}


@pytest.mark.slow
def test_bucketed_proportions_follow_n_alpha_over_10000_utterances(toy_dir):
  """Language and corpus shares of >= 10,000 drawn utterances equal the n^alpha weights (2 pp)."""
  config = make_config(toy_dir, keep_ids=False, bucket_lengths=(2_000, 4_000),
                       bucket_batch_sizes=(64, 32), max_sample_size=4_000)
  sources = ip.resolve_sources(config)
  plan, _ = ip.plan_buckets(config, sources, ip.load_builders(config))
  assert plan.dropped == {(s.corpus, s.language): sum(
      toy_corpus.utterance_length(toy_corpus.ToySpeech.BUILDER_CONFIGS[s.corpus_id].name,
                                  lang, i) < 2_000 for i in range(s.num_examples))
      for s in sources for lang in [next(l for l in toy_corpus.LANGUAGE_COUNTS[
          toy_corpus.ToySpeech.BUILDER_CONFIGS[s.corpus_id].name]
          if l.lower().replace("-", "_") == s.language)]}
  ds = ip.make_pretraining_dataset(config, process_index=0, process_count=1)
  language, corpus = collections.Counter(), collections.Counter()
  rows = 0
  for batch in ds.as_numpy_iterator():
    language.update(batch["language_id"].tolist())
    corpus.update(batch["corpus_id"].tolist())
    rows += len(batch["language_id"])
    if rows >= 12_000:
      break
  for attr, counter in (("language_id", language), ("corpus_id", corpus)):
    ids = np.array([getattr(s, attr) for s in sources])
    want = np.bincount(ids, weights=[s.weight for s in sources])
    got = np.array([counter[i] for i in range(len(want))]) / rows
    np.testing.assert_allclose(got, want, atol=0.02, err_msg=attr)


def test_every_process_draws_the_same_bucket_and_reads_its_own_slice(toy_dir):
  config = make_config(toy_dir)
  runs = [ip.make_pretraining_iterator(config, process_index=p, process_count=2) for p in (0, 1)]
  ids = [set(), set()]
  for _ in range(25):
    a, b = next(runs[0]), next(runs[1])
    assert a["waveform"].shape == b["waveform"].shape
    assert a["bucket"][0] == b["bucket"][0] and len(a["bucket"]) == ROWS[a["bucket"][0]] // 2
    ids[0].update(a["id"].tolist())
    ids[1].update(b["id"].tolist())
  assert not ids[0] & ids[1]


def test_bucketed_iterator_resumes_exactly(toy_dir):
  config = make_config(toy_dir, prefetch_batches=2)
  reference = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  expected = [next(reference) for _ in range(14)]
  run = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  for _ in range(6):
    next(run)
  state = run.get_state()
  resumed = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  for want in expected[6:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  other = ip.make_pretraining_iterator(make_config(toy_dir, bucket_mode="pad"), process_index=0,
                                       process_count=1)
  with pytest.raises(ValueError, match="bucket_mode"):
    other.set_state(state)
