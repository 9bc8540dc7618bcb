#!/usr/bin/env bash
# The exact commands that produce this experiment's select_lr/ and results/ (run from the repository root; rerun
# after an interruption: finished trials are kept, unfinished ones run again). Needs the project's environment on
# PATH (source .venv/bin/activate). Step 2 refuses to start until step 1's selection is complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
hycam sweep -c experiments/decisive_comparison/select_lr.yaml "$@"
hycam sweep -c experiments/decisive_comparison/sweep.yaml "$@"
