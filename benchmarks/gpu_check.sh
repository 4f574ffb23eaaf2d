#!/usr/bin/env bash
# The GPU check in one command on a fresh GPU machine (docs/gpu.md): installs what is missing, then
# runs python -m benchmarks.gpu_check (parity on the GPU, train-step speed per duration bucket,
# results in benchmarks/results/gpu_check_<card>.json, printed as it goes).
#   bash benchmarks/gpu_check.sh                  install, then check (further arguments go to
#                                                 benchmarks.gpu_check, e.g. --presets=xlsr_300m)
#   bash benchmarks/gpu_check.sh --download       on a machine with PyPI: the check's small
#                                                 pure-Python dependencies as wheels in .whl/, for
#                                                 a GPU machine without network (carry .whl along)
#   bash benchmarks/gpu_check.sh --dry_run        on a CPU machine: tiny preset, a step or two
# Wall-clock limit: 470 s for the python part (an H100 run is sized to finish in about 7 minutes;
# GPU_CHECK_TIMEOUT_S changes it); a run cut off keeps the figures it already wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# What the check imports besides jax (module=pip name): the step's own dependencies, and torch,
# transformers, pytest and filelock for the float32 parity tests against the Hugging Face model.
NEEDED="flax=flax optax=optax ml_collections=ml-collections tensorboardX=tensorboardX absl=absl-py
yaml=PyYAML torch=torch transformers=transformers pytest=pytest filelock=filelock"

if [ "${1:-}" = "--download" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0 tensorboardX==2.6.5
  ls -l .whl
  exit 0
fi

if [ "${1:-}" != "--dry_run" ]; then
  # 1. jax with its CUDA backend: kept where jax already sees a GPU (an image with jax's CUDA build),
  #    else installed from requirements-gpu.txt (needs PyPI).
  if "$PY" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" 2>/dev/null; then
    echo "gpu_check.sh: jax sees a GPU: $("$PY" -c 'import jax; print("jax", jax.__version__, jax.devices()[0].device_kind)')"
  else
    echo "gpu_check.sh: installing requirements-gpu.txt"
    "$PY" -m pip install -q -r requirements-gpu.txt
  fi
  # 2. The rest, where missing: from .whl/ when it is there (no network needed), else from PyPI.
  missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(p for m, p in (x.split('=') for x in sys.argv[1:]) if importlib.util.find_spec(m) is None))
" $NEEDED)
  if [ -n "$missing" ]; then
    echo "gpu_check.sh: installing $missing"
    if [ -d .whl ]; then
      pip_args=(--no-index --no-deps --find-links .whl)  # no network needed (nor tried)
    else
      pip_args=()
    fi
    "$PY" -m pip install -q ${pip_args[@]+"${pip_args[@]}"} $missing \
      || echo "gpu_check.sh: could not install all of: $missing (the stages that need them say so)"
  fi
fi
exec timeout --signal=INT --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-470}" "$PY" -m benchmarks.gpu_check "$@"
