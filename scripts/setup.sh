#!/usr/bin/env bash
# Create .venv (if needed) and install hycam_pl with its dev extras from the project's own files.
# torch is pinned first so pip does not resolve an unpinned torch to a multi-GB CUDA build on CPU machines.
# GPU users (or CPU users elsewhere) can choose the torch build: HYCAM_TORCH="torch==2.13.0 --index-url ..." .
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  python -m pip install --quiet ${HYCAM_TORCH:-torch==2.13.0}
fi
python -m pip install --quiet -e ".[dev]"
