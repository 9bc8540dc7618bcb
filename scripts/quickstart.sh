#!/usr/bin/env bash
# Set up (idempotent), then adapt SmolLM2-135M-Instruct with HyCAM on the four built-in synthetic tasks (CPU,
# about 10 minutes on 2 cores, including the one-time GGUF conversion), and print the base model's per-task
# scores next to the adapted model's. Extra arguments go to every hycam command (e.g. --trainer.max_steps 40).
# Starts fresh: the outputs of a previous quickstart (runs/quickstart) are removed first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
RUN=runs/quickstart
rm -rf "$RUN"
# The base model: HyCAM at initialisation leaves every output unchanged, so this scores SmolLM2 itself.
hycam test -c configs/quickstart.yaml --trainer.logger.init_args.version base "$@"
hycam fit -c configs/quickstart.yaml --trainer.logger.init_args.version adapted "$@"
hycam test -c configs/quickstart.yaml --ckpt_path last --trainer.logger.init_args.version adapted "$@"
echo
echo "HyCAM-adapted vs base SmolLM2-135M-Instruct, paired per test example ($RUN/comparison/):"
hycam compare base="$RUN/base" adapted="$RUN/adapted" --output "$RUN/comparison"
echo "TensorBoard: tensorboard --logdir $RUN"
