#!/usr/bin/env bash
# The exact command that produces this experiment's results/ (run from the repository root; rerun the same
# command after an interruption: finished trials are kept, unfinished ones run again). Needs the project's
# environment on PATH (source .venv/bin/activate).
set -euo pipefail
cd "$(dirname "$0")/../.."
hycam sweep -c experiments/expert_count/sweep.yaml "$@"
