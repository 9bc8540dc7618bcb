"""Shared constants and record builders for the data tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / ".." / "shared"
AUTO_COT = SHARED_DIR / "data" / "auto-cot.json"
# CI always has ../shared beside the clone, so there the test must run (and fail if the file is missing);
# on other machines it is skipped with a message saying what is absent.
requires_auto_cot = pytest.mark.skipif(
    not AUTO_COT.exists() and os.environ.get("CI", "").lower() not in ("1", "true"),
    reason=f"shared data folder absent: {AUTO_COT} not found",
)
SYNTHETIC = ("arithmetic", "code", "qa", "list_ops")


def make_records(n: int = 5, prefix: str = "") -> list[dict[str, str]]:
    """``n`` small valid Alpaca records."""
    return [{"instruction": f"{prefix}Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(n)]
