"""Reliability tests: every run writes only under pytest's tmp directories (never into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, and in a tmp cwd: LightningCLI writes config.yaml into the cwd when the logger is off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
