#!/usr/bin/env bash
# Set up (idempotent), then train HyCAM on the four built-in synthetic tasks and test it (CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
hycam fit -c configs/quickstart.yaml "$@"
hycam test -c configs/quickstart.yaml --ckpt_path last "$@"
echo "TensorBoard: tensorboard --logdir runs/quickstart"
