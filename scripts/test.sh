#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Two workers, each taking whole test files (module-scoped fixtures are built once): the suite spends most of
# its time in single-threaded subprocess start-ups and tiny models. On the 2-core CI machine, idle, measured
# 2026-12-06: one process 19.5 min; two workers 14.1 min (three were slower: the two-rank tests then contend).
# HYCAM_TEST_WORKERS=0 runs it in this process (e.g. to debug); any number sets the workers.
# One compute thread per process: two workers with two OpenMP threads each oversubscribe two cores, and the
# spinning threads cost more CPU time than the second thread saves on these tiny models.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
python -m pytest -q -n "${HYCAM_TEST_WORKERS:-2}" --dist loadfile "$@"
