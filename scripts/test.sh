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
.venv/bin/python -m pytest tests "$@"
