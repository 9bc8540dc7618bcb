#!/usr/bin/env bash
# The exact command that produces results/ (run from anywhere; rerun after an interruption: finished trials are
# kept). Needs the project's environment on PATH (source .venv/bin/activate) and the learning-rate selection of
# ../decisive_comparison (its run.sh, step 1): this sweep refuses to start until that selection is complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
hycam sweep -c experiments/decisive_expert_count/sweep.yaml "$@"
