#!/usr/bin/env bash
# Set up kd in ./.venv: a fast BLAS for MLX on Linux CPU (Debian/Ubuntu's OpenBLAS), then the
# package itself. `./setup.sh --dev` adds the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(uname -s)" = "Linux" ] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1; then
  # MLX's Linux CPU wheel ships the reference BLAS (32x slower at matmul, measured);
  # kd preloads OpenBLAS when it is installed (kd_core/runtime/blas.py).
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libopenblas0-pthread >/dev/null; } \
      || echo "setup: could not install libopenblas0-pthread; kd will run, but slower" >&2
  else
    echo "setup: install OpenBLAS (libopenblas.so.0) for fast MLX on CPU" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
