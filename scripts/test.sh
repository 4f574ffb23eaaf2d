#!/usr/bin/env bash
# The README's test command: create .venv if needed, install runtime + test requirements, run pytest.
#   bash scripts/test.sh            fast tier: every test not marked slow (the default)
#   bash scripts/test.sh --full     full tier: every test (what .ci/run runs); also installs the
#                                   Beam extra (requirements-beam.txt) so the Beam build tests run
# Further arguments go to pytest (e.g. bash scripts/test.sh --full tests/test_main_demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
TIER=(-m "not slow")
if [ "${1:-}" = "--full" ]; then
  TIER=()
  shift
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q -r requirements-test.txt
# Optional Apache Beam corpus builds (requirements-beam.txt): the full tier installs them so that
# tests/test_beam_build.py runs; without apache-beam those tests skip.
if [ ${#TIER[@]} -eq 0 ]; then
  .venv/bin/pip install -q -r requirements-test.txt -r requirements-beam.txt
  # The versions must stay consistent (protobuf: TensorFlow >=6.31.1,<8, Beam <7); pyctcdecode's
  # metadata (numpy<2, hypothesis; requirements-lm.txt is installed without them) is known and ignored.
  if ! check=$(.venv/bin/pip check); then
    broken=$(grep -v '^pyctcdecode ' <<<"$check" || true)
    if [ -n "$broken" ]; then echo "$broken" >&2; exit 1; fi
  fi
fi
# Optional CTC beam search + KenLM (pyctcdecode pins numpy<2 in its metadata: no dependency resolution).
.venv/bin/pip install -q --no-deps -r requirements-lm.txt \
  || echo "optional LM packages (requirements-lm.txt) not installed: the KenLM beam-search test is skipped"
.venv/bin/pip install -q --no-deps -e .
export JAX_PLATFORMS=cpu
# Test files run on PYTEST_WORKERS processes (default 2; whole files per worker, so module fixtures
# such as the TPU plan are made once; the synthetic and toy corpora are built once per run for all
# workers, tests/conftest.py).
.venv/bin/python -m pytest tests -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=15 \
  ${TIER[@]+"${TIER[@]}"} "$@"
