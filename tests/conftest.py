"""Test setup: a fake 8-device CPU mesh and quiet TensorFlow, set before jax/tf are imported."""
import os

# LLVM at -O0 for the CPU programs the in-process tests compile: most tests compile far more than
# they run (a tiny model, a few steps), and -O0 halves the compile (the 2-layer train step: 16 s ->
# 8 s on the loaded 2-core machine). Compute-heavy tests get slower (test_masking's 7,500-row
# statistics: 3 s -> 27 s); 21 in-process test files measured: 15.1 -> 11.6 min in all. The
# subprocess runs set their own XLA_FLAGS: -O0 for test_faults' and the two-process run's short
# trainings, the default -O2 for the SIGKILL and demo-learning runs (they mostly execute).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent compilation cache per test session, shared with the training subprocesses that
# tests launch: a restarted or second process loads the compiled step instead of recompiling it
# (on 2 CPU cores the tiny step's compile is most of a restart). Fresh each session: no stale state.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xlsr_jax_test_jit_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import contextlib  # noqa: E402  (after the environment is set)

import filelock  # noqa: E402
import pytest  # noqa: E402


def _shared_dir(tmp_path_factory, name: str):
  """A directory shared by every xdist worker of this test run (the workers' common base temp)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  return base / name


@contextlib.contextmanager
def _build_once(path):
  """Yields True to the one process that must build `path`, False once it is built."""
  with filelock.FileLock(str(path) + ".lock"):
    done = path / ".built"
    if done.exists():
      yield False
      return
    path.mkdir(parents=True, exist_ok=True)
    yield True
    done.touch()


@pytest.fixture(scope="session")
def synthetic_tiny_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding synthetic_speech/tiny, built once per test run (all workers)."""
  path = _shared_dir(tmp_path_factory, "synthetic_tiny_tfds")
  with _build_once(path) as build:
    if build:
      import tensorflow_datasets as tfds
      from data_pipelines.synthetic_speech import SyntheticSpeech
      tfds.disable_progress_bar()
      SyntheticSpeech(config="tiny", data_dir=str(path)).download_and_prepare()
  return str(path)


@pytest.fixture(scope="session")
def toy_corpus_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the toy_speech corpora (tests/toy_corpus.py), built once per run."""
  path = _shared_dir(tmp_path_factory, "toy_tfds")
  with _build_once(path) as build:
    if build:
      from tests import toy_corpus
      toy_corpus.build_toy_corpora(path)
  return str(path)
