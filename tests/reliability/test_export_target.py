"""``hycam export`` never deletes or renames what it did not write (issue 21): a LoRA checkpoint (whose peft
folder used to be swapped in whole) exported onto a file, into a run's folder, into ``.``, into another kind of
adapter, or into a read-only folder is refused with one ``error:`` line; re-exporting replaces only the
adapter's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.reliability.helpers import run_config, run_hycam_in_process, write_config


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora-run")
    config = run_config(root, max_steps=1, every_n_train_steps=1, model={"method": "lora"})
    write_config(root / "config.yaml", config)
    result = run_hycam_in_process(["fit", "-c", "config.yaml"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "checkpoints" / "last.ckpt"


def export(checkpoint: Path, target: str | Path, cwd: Path):
    return run_hycam_in_process(["export", str(checkpoint), str(target)], cwd)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_onto_an_existing_file_is_refused_and_the_file_kept(lora_checkpoint, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    result = export(lora_checkpoint, target, tmp_path)
    assert result.returncode == 2
    assert "is an existing file" in _one_error_line(result.stderr)
    assert target.read_text() == "mine" and not (tmp_path / ".notes.txt.old").exists()


def test_export_into_a_folder_of_other_files_is_refused_and_nothing_deleted(lora_checkpoint, tmp_path):
    run_dir = lora_checkpoint.parent.parent / "runs"  # the run's own folder: events, config, checkpoints
    before = _snapshot(run_dir)
    assert before
    result = export(lora_checkpoint, run_dir, tmp_path)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert str(run_dir) in line and "not empty and holds no adapter" in line, line
    assert _snapshot(run_dir) == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".hycam-export-")]


def test_export_into_dot_is_refused_when_it_holds_other_files(lora_checkpoint, tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    result = export(lora_checkpoint, ".", tmp_path)
    assert result.returncode == 2
    assert "not empty" in _one_error_line(result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_reexport_replaces_only_the_adapters_own_files(lora_checkpoint, tmp_path):
    target = tmp_path / "adapter"
    assert export(lora_checkpoint, target, tmp_path).returncode == 0
    written = {p.name for p in target.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "hycam_method.json"} <= written
    (target / "NOTES.md").write_text("my notes")
    (target / "adapter_model.safetensors").write_bytes(b"stale")
    result = export(lora_checkpoint, target, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (target / "NOTES.md").read_text() == "my notes"
    assert (target / "adapter_model.safetensors").read_bytes() != b"stale"
    assert {p.name for p in target.iterdir()} == written | {"NOTES.md"}


def test_export_over_another_kind_of_adapter_is_refused(lora_checkpoint, tmp_path):
    target = tmp_path / "hycam-adapter"
    target.mkdir()
    (target / "adapter_config.json").write_text(json.dumps({"hycam_config": {}, "base_model": {}}))
    before = _snapshot(target)
    result = export(lora_checkpoint, target, tmp_path)
    assert result.returncode == 2
    assert "holds a hycam adapter, this checkpoint's is peft lora" in _one_error_line(result.stderr)
    assert _snapshot(target) == before


def test_export_into_an_empty_folder_and_a_new_one_writes_the_adapter(lora_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(lora_checkpoint, ".", empty).returncode == 0
    assert (empty / "adapter_model.safetensors").is_file()
    assert export(lora_checkpoint, tmp_path / "new" / "adapter", tmp_path).returncode == 0
    assert (tmp_path / "new" / "adapter" / "hycam_method.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_one_line(lora_checkpoint, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = export(lora_checkpoint, locked / "adapter", tmp_path)
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2
    assert "cannot write" in _one_error_line(result.stderr)
