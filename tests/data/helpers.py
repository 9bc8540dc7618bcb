"""Shared constants and record builders for the data tests."""

from __future__ import annotations

from pathlib import Path

SHARED_DIR = Path(__file__).resolve().parents[2] / ".." / "shared"
AUTO_COT = SHARED_DIR / "data" / "auto-cot.json"
SYNTHETIC = ("arithmetic", "code", "qa", "list_ops")


def make_records(n: int = 5, prefix: str = "") -> list[dict[str, str]]:
    """``n`` small valid Alpaca records."""
    return [{"instruction": f"{prefix}Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(n)]
