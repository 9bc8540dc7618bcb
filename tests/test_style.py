"""The repository is formatted and linted with ruff (its settings in pyproject.toml), the README's Python blocks
and the notebook included, so a change that skips ``ruff format`` / ``ruff check`` fails here, not in review."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    executable = str(Path(sys.executable).with_name("ruff"))
    if not Path(executable).exists():
        executable = shutil.which("ruff") or "ruff"
    return subprocess.run([executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [("check", "."), ("format", "--check", ".")], ids=["check", "format"])
def test_ruff_finds_nothing(command: tuple[str, ...]) -> None:
    done = ruff(*command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
