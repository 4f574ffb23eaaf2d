#!/usr/bin/env bash
# The README's test command: create .venv if needed, install runtime + test requirements, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q -r requirements-test.txt
# Optional CTC beam search + KenLM (pyctcdecode pins numpy<2 in its metadata: no dependency resolution).
.venv/bin/pip install -q --no-deps -r requirements-lm.txt \
  || echo "optional LM packages (requirements-lm.txt) not installed: the KenLM beam-search test is skipped"
.venv/bin/pip install -q --no-deps -e .
export JAX_PLATFORMS=cpu
# Test files run on PYTEST_WORKERS processes (default 2; whole files per worker, so module fixtures
# such as the built corpus and the TPU plan are made once): 15.5 -> 12.2 min on the 2-core machine.
.venv/bin/python -m pytest tests -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
