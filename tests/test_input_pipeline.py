"""Pretraining input pipeline on the toy TFDS corpora, and the device feed on 8 fake CPU devices."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from data_pipelines import input_pipeline as ip
from data_pipelines import sources as sources_lib
from data_pipelines.device_feed import global_batch
from data_pipelines.features import SAMPLE_RATE
from data_pipelines.sampling import two_level_weights
from tests import toy_corpus
from xlsr_jax.sharding import mesh as mesh_lib

MIN, MAX = 2_000, 6_000  # min / max_sample_size; toy utterances have 800..12,000 samples
SOURCES = (("toy_speech/alpha", None), ("toy_speech/beta", None))


@pytest.fixture(scope="module")
def toy_dir(toy_corpus_dir):
  return toy_corpus_dir


def make_config(toy_dir, **overrides):
  values = dict(data_dir=toy_dir, sources=SOURCES, min_sample_size=MIN, max_sample_size=MAX,
                global_batch_size=4, seed=7, prefetch_batches=0)
  return ip.PipelineConfig(**{**values, **overrides})


def toy_utterances():
  """{id: (corpus, language, length)} of every toy "train" utterance."""
  out = {}
  for corpus, counts in toy_corpus.LANGUAGE_COUNTS.items():
    for lang, count in counts.items():
      for i in range(count):
        out[toy_corpus.utterance_id(corpus, lang, i)] = (
            corpus, lang, toy_corpus.utterance_length(corpus, lang, i))
  return out


def exact_hours(corpus, lang):
  lengths = [toy_corpus.utterance_length(corpus, lang, i)
             for i in range(toy_corpus.LANGUAGE_COUNTS[corpus][lang])]
  return sum(lengths) / SAMPLE_RATE / 3600


def test_split_hours_from_metadata_or_bytes(toy_dir):
  alpha = tfds.builder("toy_speech/alpha", data_dir=toy_dir)
  beta = tfds.builder("toy_speech/beta", data_dir=toy_dir)
  assert sources_lib.split_hours(alpha, "train_fr") == pytest.approx(exact_hours("alpha", "fr"), rel=1e-9)
  assert "hours" not in (beta.info.metadata or {})
  # beta records no hours: estimated from the stored bytes (zlib-compressed int16, ~1.7 a sample).
  assert sources_lib.split_hours(beta, "train_pt_br") == pytest.approx(exact_hours("beta", "pt-BR"), rel=0.25)
  with pytest.raises(KeyError, match="train_xx"):
    sources_lib.split_hours(beta, "train_xx")


def test_resolve_sources_ids_weights_and_errors(toy_dir):
  sources = ip.resolve_sources(make_config(toy_dir))
  assert [(s.corpus_id, s.language) for s in sources] == [
      (0, "en"), (0, "fr"), (0, "sw"), (1, "en"), (1, "pt_br"), (1, "yo")]
  ids = {s.language: s.language_id for s in sources}
  assert ids == {"en": 0, "fr": 1, "pt_br": 2, "sw": 3, "yo": 4}
  expected = two_level_weights({(s.corpus, s.language): s.hours for s in sources}, 0.5)
  assert {(s.corpus, s.language): s.weight for s in sources} == pytest.approx(expected)
  from_lists = ip.PipelineConfig.from_mapping(
      {"data_dir": toy_dir, "sources": [["toy_speech/beta", ["pt-BR"]]], "alpha": 0.5})
  assert from_lists.sources == (("toy_speech/beta", ("pt-BR",)),)
  subset = ip.resolve_sources(from_lists)
  assert [(s.split_name, s.weight) for s in subset] == [("train_pt_br", 1.0)]
  with pytest.raises(ValueError, match=r"toy_speech/alpha.*\['de'\].*\['en', 'fr', 'sw'\]"):
    ip.resolve_sources(make_config(toy_dir, sources=(("toy_speech/alpha", ("en", "de")),)))


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_mix_sources_matches_two_level_weights(toy_dir, alpha):
  """20,000 draws of the tf.data choice mechanism: language and corpus shares within 2 points."""
  sources = ip.resolve_sources(make_config(toy_dir, alpha=alpha))
  datasets = [tf.data.Dataset.from_tensors(i).repeat() for i in range(len(sources))]
  mixed = ip.mix_sources(datasets, [s.weight for s in sources], seed=3, process_index=0)
  drawn = next(iter(mixed.batch(20_000))).numpy()
  for attr in ("language_id", "corpus_id"):
    ids = np.array([getattr(s, attr) for s in sources])
    want = np.bincount(ids, weights=[s.weight for s in sources])
    got = np.bincount(ids[drawn], minlength=len(want)) / len(drawn)
    np.testing.assert_allclose(got, want, atol=0.02, err_msg=attr)
  if alpha == 0.0:  # two corpora of three languages: every source 1/6
    np.testing.assert_allclose([s.weight for s in sources], 1 / 6)


def test_processes_read_disjoint_slices_that_cover_the_split(toy_dir):
  config = make_config(toy_dir, num_epochs=1, keep_ids=True, global_batch_size=2)
  seen = []
  for process_index in (0, 1):
    ds = ip.make_pretraining_dataset(config, process_index=process_index, process_count=2)
    ids = [i.decode() for batch in ds.as_numpy_iterator() for i in batch["id"]]
    assert len(ids) == len(set(ids))
    # Every process has every (corpus, language) source.
    assert {i.rsplit("/", 1)[0] for i in ids} == {
        f"{c}/{l}" for c, counts in toy_corpus.LANGUAGE_COUNTS.items() for l in counts}
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  long_enough = {i for i, (_, _, n) in toy_utterances().items() if n >= MIN}
  assert seen[0] | seen[1] == long_enough


def test_batches_have_static_shapes_correct_padding_and_ids(toy_dir):
  config = make_config(toy_dir, keep_ids=True, global_batch_size=8)
  utterances = toy_utterances()
  sources = ip.resolve_sources(config)
  by_key = {(toy_corpus.ToySpeech.BUILDER_CONFIGS[s.corpus_id].name, s.language): s for s in sources}
  it = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  for _ in range(6):
    batch = next(it)
    assert batch["waveform"].shape == (8, MAX) and batch["waveform"].dtype == np.float32
    assert batch["lengths"].shape == (8,) and batch["lengths"].dtype == np.int32
    assert batch["language_id"].dtype == np.int32 and batch["corpus_id"].shape == (8,)
    for row in range(8):
      corpus, lang, length = utterances[batch["id"][row].decode()]
      source = by_key[(corpus, lang.lower().replace("-", "_"))]
      assert (batch["corpus_id"][row], batch["language_id"][row]) == (
          source.corpus_id, source.language_id)
      wave = batch["waveform"][row]
      assert length >= MIN and batch["lengths"][row] == min(length, MAX)
      mask = np.arange(MAX) >= batch["lengths"][row]
      assert np.all(wave[mask] == 0)
      if length <= MAX:  # the whole utterance, normalised over itself
        assert abs(wave[:length].mean()) < 1e-3 and wave[:length].std() == pytest.approx(1, abs=1e-3)


def test_same_seed_same_batches_other_seed_different(toy_dir):
  def first_batches(seed):
    it = ip.make_pretraining_iterator(make_config(toy_dir, seed=seed, keep_ids=True),
                                      process_index=1, process_count=2)
    return [next(it) for _ in range(3)]

  a, b, c = first_batches(7), first_batches(7), first_batches(8)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["waveform"], z["waveform"]) for x, z in zip(a, c))


def test_restored_iterator_continues_exactly(toy_dir, tmp_path):
  """Positions saved mid-run (and across source epochs) restore into a new iterator exactly."""
  config = make_config(toy_dir, keep_ids=True, prefetch_batches=2)
  reference = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  expected = [next(reference) for _ in range(12)]
  run = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  for _ in range(5):
    next(run)
  state = run.get_state()
  run.save(tmp_path)
  assert len(state) < 8_000  # positions only: no audio in the state
  for _ in range(3):
    next(run)
  resumed = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  from_dir = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  from_dir.restore(tmp_path)
  run.set_state(state)  # rewinds an iterator whose prefetch thread is running
  for it in (resumed, from_dir, run):
    for want in expected[5:]:
      got = next(it)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  other = ip.make_pretraining_iterator(make_config(toy_dir, keep_ids=True, seed=8),
                                       process_index=0, process_count=1)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


def test_source_with_no_long_utterance_raises(toy_dir):
  config = make_config(toy_dir, min_sample_size=toy_corpus.MAX_SAMPLES + 1)
  it = ip.make_pretraining_iterator(config, process_index=0, process_count=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match="no utterance for min_sample_size"):
    next(it)


def test_crop_and_pad_short_utterance_is_right_padded():
  audio = (np.arange(1500) - 700).astype(np.int16)
  wave, length = ip.crop_and_pad(tf.constant(audio), tf.constant([1, 2], tf.int64),
                                 max_sample_size=2000, normalize=False)
  np.testing.assert_array_equal(wave[:1500], audio / 32768.0)
  assert np.all(wave.numpy()[1500:] == 0)
  assert int(length) == 1500


def test_crop_is_a_window_of_the_utterance_normalised_over_all_of_it():
  audio = (np.arange(8000) * 3 - 12000).astype(np.int16)
  x = audio / 32768.0
  full = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
  starts = set()
  for k in range(20):
    key = tf.constant([k, 5], tf.int64)
    raw, length = ip.crop_and_pad(tf.constant(audio), key, max_sample_size=2000, normalize=False)
    start = int(np.argmin(np.abs(x - raw[0].numpy())))
    assert 0 <= start <= 6000 and int(length) == 2000  # a full window: no padding
    np.testing.assert_array_equal(raw, x[start:start + 2000].astype(np.float32))
    wave, _ = ip.crop_and_pad(tf.constant(audio), key, max_sample_size=2000, normalize=True)
    np.testing.assert_allclose(wave, full[start:start + 2000], atol=1e-4)
    assert wave.numpy().std() < 0.5  # a quarter of a ramp: not re-normalised over the crop
    starts.add(start)
  assert len(starts) >= 10


def test_process_split_is_even_and_refuses_empty_slices():
  slices = [ip.process_split("train_en", 11, p, 3) for p in range(3)]
  assert slices == ["train_en[0:4]", "train_en[4:8]", "train_en[8:11]"]
  with pytest.raises(ValueError, match="'train_yo' has 5 examples, fewer than the 6 processes"):
    ip.process_split("train_yo", 5, 5, 6)


_BATCH_SPEC = mesh_lib.batch_spec()  # the default rule table's: ("data", "fsdp")


def test_global_batch_on_an_8_device_mesh():
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  rng = np.random.default_rng(0)
  local = {"waveform": rng.standard_normal((8, 16)).astype(np.float32),
           "padding_mask": rng.random((8, 16)) > 0.5,
           "language_id": np.arange(8, dtype=np.int32)}
  out = global_batch(local, mesh, _BATCH_SPEC)
  for name, value in local.items():
    array = out[name]
    assert array.shape == value.shape and array.dtype == value.dtype
    assert array.sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), value.ndim)
    for shard in array.addressable_shards:
      assert shard.data.shape[0] == 2  # 8 rows over data x fsdp = 4 shards, replicated on tensor
      np.testing.assert_array_equal(shard.data, value[shard.index])
  with pytest.raises(TypeError, match="'id'.*drop string"):
    global_batch({"id": np.array([b"a"] * 8)}, mesh, _BATCH_SPEC)
  with pytest.raises(ValueError, match="global batch 6 .* not divisible by the 4 shards"):
    global_batch({"x": np.zeros((6, 3), np.float32)}, mesh, _BATCH_SPEC)
  with pytest.raises(ValueError, match=r"\['fsdp'\]"):
    global_batch(local, jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)), _BATCH_SPEC)


_TWO_PROCESS_SCRIPT = """
import sys
import jax, numpy as np
from jax.sharding import AxisType
from data_pipelines.device_feed import global_batch, process_rows
from xlsr_jax.sharding.mesh import batch_spec
pid = int(sys.argv[1])
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=pid)
mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
rows = np.arange(4 * pid, 4 * pid + 4, dtype=np.int32)  # this process's rows of the global batch
out = global_batch({"x": np.stack([rows, -rows], axis=1)}, mesh, batch_spec())["x"]
assert out.shape == (8, 2), out.shape
expected = np.stack([np.arange(8), -np.arange(8)], axis=1)
for shard in out.addressable_shards:
  np.testing.assert_array_equal(shard.data, expected[shard.index])
whole = np.stack([np.arange(8), -np.arange(8)], axis=1)  # a batch every process built whole
out = global_batch(process_rows({"x": whole}), mesh, batch_spec())["x"]  # (the downstream feed)
for shard in out.addressable_shards:
  np.testing.assert_array_equal(shard.data, expected[shard.index])
print("ok", pid, sorted(int(s.index[0].start) for s in out.addressable_shards))
"""


def test_global_batch_with_two_processes():
  """Two jax.distributed CPU processes of 4 devices: each hands over its rows of one batch (or
  its process_rows of a batch both built whole)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(pid), str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for pid in (0, 1)]
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  for pid, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, out
    assert f"ok {pid} {list(range(4 * pid, 4 * pid + 4))}" in out, out  # 8 shards of one row


def test_select_languages_names_missing_and_available_languages():
  from data_pipelines.features import select_languages
  names = ["train_en", "train_pt_br", "test_en"]
  assert select_languages(names, "train", None, "c") == ["en", "pt_br"]
  assert select_languages(names, "train", ["pt-BR"], "c") == ["pt_br"]
  with pytest.raises(ValueError, match=r"corpus X: no 'test' split for languages \['pt_br'\]; it has \['en'\]"):
    select_languages(names, "test", ["pt-BR"], "corpus X")
  with pytest.raises(ValueError, match="no splits named 'validation_<lang>'"):
    select_languages(names, "validation", None, "c")
