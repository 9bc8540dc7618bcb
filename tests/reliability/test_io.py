"""The shared writers of ``hycam_pl.io``: a staged folder placed into a new or existing folder replaces only its
own files (a peft adapter saved into a folder of other files used to swap the whole folder out, deleting them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hycam_pl.io import place_staged_folder, write_text_atomically


def _staged(tmp_path: Path) -> Path:
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "adapter_model.safetensors").write_text("new weights")
    (staging / "adapter_config.json").write_text("new config")
    return staging


def test_a_staged_folder_becomes_a_new_folder(tmp_path):
    target = place_staged_folder(_staged(tmp_path), tmp_path / "adapter")
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (tmp_path / ".staging").exists()


def test_into_an_existing_folder_only_its_own_files_are_replaced(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "adapter_model.safetensors").write_text("old weights")
    (target / "README.md").write_text("mine")
    order: list[str] = []
    real_replace = __import__("os").replace
    monkeypatch.setattr(
        "hycam_pl.io.os.replace", lambda a, b: (order.append(Path(b).name), real_replace(a, b))
    )
    place_staged_folder(_staged(tmp_path), target, last=("adapter_config.json",))
    assert (target / "README.md").read_text() == "mine"
    assert (target / "adapter_model.safetensors").read_text() == "new weights"
    assert order == ["adapter_model.safetensors", "adapter_config.json"]  # the config (checksum) last
    assert not (tmp_path / ".staging").exists() and not list(tmp_path.glob(".adapter*"))


def test_a_file_in_the_way_is_refused_and_kept(tmp_path):
    target = write_text_atomically(tmp_path / "adapter", "a file of mine")
    with pytest.raises(ValueError, match="is an existing file"):
        place_staged_folder(_staged(tmp_path), target)
    assert target.read_text() == "a file of mine"
