"""Shared constants and record builders for the data tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The Auto-CoT file the experiments read (experiments/tasks.yaml): $HYCAM_AUTO_COT, by default
# ../shared/data/auto-cot.json, relative to the repository root as the experiments resolve it.
AUTO_COT_ENV = "HYCAM_AUTO_COT"
AUTO_COT = (REPO / os.environ.get(AUTO_COT_ENV, "../shared/data/auto-cot.json")).resolve()
# Where the file is (CI keeps ../shared beside the checkout) the tests that need it run; in a clone without it they
# are skipped, saying which file is absent and how to provide it.
requires_auto_cot = pytest.mark.skipif(
    not AUTO_COT.is_file(),
    reason=f"Auto-CoT data not found at {AUTO_COT} (set {AUTO_COT_ENV}; experiments/README.md says where it comes from)",
)
SYNTHETIC = ("arithmetic", "code", "qa", "list_ops")


def make_records(n: int = 5, prefix: str = "") -> list[dict[str, str]]:
    """``n`` small valid Alpaca records."""
    return [{"instruction": f"{prefix}Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(n)]
