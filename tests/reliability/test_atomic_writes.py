"""A crash while writing an adapter or a checkpoint leaves the previous file intact and loadable."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

import hycam_pl.modulation.persistence as persistence
from hycam_pl import HyCAMConfig, adapter_state_dict, attach, load_adapter, save_adapter
from hycam_pl.backbone import load_backbone
from hycam_pl.training.faults import AtomicCheckpointIO, atomic_torch_save, install_atomic_checkpoint_io
from tests.reliability.helpers import TINY_BACKBONE, run_config, tiny_trainer, write_config


class Crash(OSError):
    """Stands in for a full disk or a kill in the middle of a write."""


def _model(seed: int) -> torch.nn.Module:
    model = attach(load_backbone(TINY_BACKBONE), HyCAMConfig(num_experts=2, rank=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator))
    return model


def _loaded(directory: Path) -> dict[str, torch.Tensor]:
    return adapter_state_dict(load_adapter(load_backbone(TINY_BACKBONE), directory))


def _half_write_then_crash():
    def write(*args, **kwargs):
        path = args[1] if len(args) > 1 else kwargs.get("filename")
        Path(path).write_bytes(b"\x00" * 64)  # some bytes reach the disk, then the writer dies
        raise Crash("disk full")

    return write


# --------------------------------------------------------------------------------------------- adapters
def test_adapter_weights_write_crash_keeps_the_previous_adapter(tmp_path: Path, monkeypatch) -> None:
    directory = tmp_path / "adapter"
    save_adapter(_model(seed=1), directory)
    before = _loaded(directory)

    monkeypatch.setattr(persistence, "save_file", _half_write_then_crash())
    with pytest.raises(Crash):
        save_adapter(_model(seed=2), directory)

    after = _loaded(directory)  # still loads: checksum, keys and shapes all validate
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in directory.iterdir()) == [persistence.CONFIG_FILE, persistence.WEIGHTS_FILE]


def test_adapter_config_write_crash_keeps_the_previous_adapter(tmp_path: Path, monkeypatch) -> None:
    """The weights and their config (with the weights' checksum) must change together: a crash after the new
    weights are in place but before the new config is must not leave a pair that no longer loads."""
    directory = tmp_path / "adapter"
    save_adapter(_model(seed=1), directory)
    before = _loaded(directory)

    def crash(*args, **kwargs):
        raise Crash("disk full")

    monkeypatch.setattr(persistence.json, "dump", crash)
    with pytest.raises(Crash):
        save_adapter(_model(seed=2), directory)
    monkeypatch.undo()

    after = _loaded(directory)
    assert all(torch.equal(after[k], before[k]) for k in before)


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_write_crash_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)

    def half_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial")  # a truncated zip, as torch.save leaves it when killed
        raise Crash("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(Crash):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()

    restored = io.load_checkpoint(path)
    assert restored["global_step"] == 1 and torch.equal(restored["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "temporary file left behind"


def test_checkpoint_is_staged_beside_its_target(tmp_path: Path, monkeypatch) -> None:
    """``os.replace`` within one directory is atomic on every filesystem; a move from ``$TMPDIR`` is not."""
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def record(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    path = tmp_path / "ckpt" / "step=3.ckpt"
    atomic_torch_save({"x": 1}, path)
    assert renames == [(renames[0][0], path)] and renames[0][0].parent == path.parent


def test_lightning_default_io_stages_checkpoints_in_the_system_temp_dir(tmp_path: Path, monkeypatch) -> None:
    """Why AtomicCheckpointIO exists (Lightning 2.6.6): the default writes a temporary in ``$TMPDIR`` and
    ``shutil.move``s it, which is a copy into the final path when ``$TMPDIR`` is another filesystem. If this
    fails after a Lightning upgrade, re-check whether AtomicCheckpointIO is still needed."""
    staged: list[Path] = []
    real_mkstemp = tempfile.mkstemp

    def record(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        staged.append(Path(name))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", record)
    path = tmp_path / "ckpt" / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"x": 1}, path)
    assert staged and all(p.parent != path.parent for p in staged), staged
    assert Path(tempfile.gettempdir()) in {p.parent for p in staged}


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"partial")
    other = tmp_path / ".epoch=0.ckpt.abc.tmp"  # another checkpoint's in-flight write: not ours to touch
    other.write_bytes(b"partial")
    atomic_torch_save({"x": 1}, path)
    assert not stale.exists() and other.exists()
    assert torch.load(path, weights_only=False) == {"x": 1}


def test_trainer_with_atomic_io_saves_checkpoints_that_resume(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=0
    )
    trainer = tiny_trainer(
        tmp_path, max_steps=4, callbacks=[checkpoints], plugins=[AtomicCheckpointIO()], limit_train_batches=2
    )
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.fit(BoringModel())
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 4
    resumed = tiny_trainer(
        tmp_path,
        max_steps=6,
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=0)
        ],
        limit_train_batches=2,
    )
    resumed.fit(BoringModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.global_step == 6


def test_install_replaces_only_the_default_io(tmp_path: Path) -> None:
    default = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert install_atomic_checkpoint_io(default) is True
    assert isinstance(default.strategy.checkpoint_io, AtomicCheckpointIO)

    class UserIO(TorchCheckpointIO):
        pass

    chosen = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, plugins=[UserIO()])
    assert install_atomic_checkpoint_io(chosen) is False
    assert type(chosen.strategy.checkpoint_io) is UserIO


def test_the_cli_trainer_uses_atomic_checkpoints(tmp_path: Path, monkeypatch) -> None:
    from hycam_pl.cli import HyCAMCLI
    from hycam_pl.data import MultiTaskDataModule
    from hycam_pl.training import MultiTaskLM

    config = write_config(tmp_path / "config.yaml", run_config(tmp_path, every_n_train_steps=1))
    monkeypatch.setattr(sys, "argv", ["hycam"])
    cli = HyCAMCLI(MultiTaskLM, MultiTaskDataModule, run=False, args=["-c", str(config)])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
