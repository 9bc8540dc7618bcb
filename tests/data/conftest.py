"""Fixtures for the data tests: the file-free byte tokenizer and helpers that write tiny data files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def data_byte_tokenizer():
    from hycam_pl.data import load_tokenizer

    return load_tokenizer("byte")


@pytest.fixture
def data_write_json(tmp_path: Path) -> Callable[..., Path]:
    """Write ``content`` (a Python object, or raw ``str``/``bytes``) to ``tmp_path/name``."""

    def write(name: str, content: Any) -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif name.endswith(".jsonl"):
            path.write_text("".join(json.dumps(row) + "\n" for row in content), encoding="utf-8")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
        return path

    return write
