"""No code runs from a checkpoint a user points at (issue 21): crafted files and folders, built here, whose
payload would only create a marker file in the test's tmp directory, are refused with one ``error:`` line
through every path (``hycam export``, ``--ckpt_path FILE|FOLDER|last``, the API); real checkpoints still load.
"""

from __future__ import annotations

import builtins
import fractions
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

from hycam_pl.modulation import HyCAMConfig
from hycam_pl.training.checkpoints import (
    UnsafeCheckpointError,
    install_safe_checkpoint_loading,
    read_checkpoint,
)
from tests.reliability.helpers import run_config, run_hycam_in_process, write_config


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: the file appears iff code ran from the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def crafted_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"method": "hycam"}, "extra": Payload(marker)}, path)
    return path


def crafted_distributed_folder(path: Path, marker: Path) -> Path:
    """A folder torch treats as a distributed checkpoint: its ``.metadata`` is a plain pickle."""
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    return path


def crafted_deepspeed_folder(path: Path, marker: Path) -> Path:
    (path / "checkpoint").mkdir(parents=True)
    (path / "latest").write_text("checkpoint")
    torch.save({"module": None, "extra": Payload(marker)}, path / "checkpoint" / "mp_rank_00_model_states.pt")
    return path


CRAFTED = {
    "file": crafted_file,
    "distributed-folder": crafted_distributed_folder,
    "deepspeed-folder": crafted_deepspeed_folder,
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_hycam_export_of_a_crafted_checkpoint_runs_no_code(tmp_path, kind):
    marker = tmp_path / "payload-ran"
    source = CRAFTED[kind](tmp_path / "crafted.ckpt", marker)
    result = run_hycam_in_process(["export", str(source), str(tmp_path / "adapter")], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = _one_error_line(result.stderr)
    assert "refused checkpoint" in line and str(source) in line and ".open" in line, line
    assert not marker.exists()
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_ckpt_path_of_a_crafted_checkpoint_runs_no_code(tmp_path, kind):
    """``test --ckpt_path FILE|FOLDER`` and ``fit --ckpt_path last`` where a copied run's last.ckpt is crafted."""
    marker = tmp_path / "payload-ran"
    config = run_config(tmp_path, every_n_train_steps=1)
    write_config(tmp_path / "config.yaml", config)
    source = CRAFTED[kind](tmp_path / "crafted.ckpt", marker)
    result = run_hycam_in_process(["test", "-c", "config.yaml", "--ckpt_path", str(source)], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refused checkpoint" in _one_error_line(result.stderr)

    last = CRAFTED[kind](tmp_path / "checkpoints" / "last.ckpt", marker)  # found by `--ckpt_path last`
    result = run_hycam_in_process(["fit", "-c", "config.yaml", "--ckpt_path", "last"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = _one_error_line(result.stderr)
    assert "refused checkpoint" in line and str(last) in line, line
    assert not marker.exists()


def test_a_harmless_object_beyond_the_allow_list_is_refused_by_name(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"ratio": fractions.Fraction(1, 3)}}, path)
    write_config(tmp_path / "config.yaml", run_config(tmp_path))
    result = run_hycam_in_process(["test", "-c", "config.yaml", "--ckpt_path", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = _one_error_line(result.stderr)
    assert "fractions.Fraction" in line and str(path) in line, line


def test_the_types_lightning_and_hycam_save_are_allowed(tmp_path):
    path = tmp_path / "ours.ckpt"
    hparams = {"adapter": pathlib.Path("/a/b"), "hycam": HyCAMConfig(num_experts=2, rank=4)}
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": hparams}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["hyper_parameters"] == hparams
    torch.testing.assert_close(checkpoint["state_dict"]["w"], torch.ones(2))


def _distributed_checkpoint(path: Path, items: dict) -> Path:
    import torch.distributed.checkpoint as dcp

    with pytest.warns(UserWarning):  # torch: "no process group" (a single-process save)
        dcp.save(items, checkpoint_id=str(path), no_dist=True)
    return path


def test_a_distributed_checkpoint_folder_is_read_without_unpickling_code(tmp_path):
    folder = _distributed_checkpoint(
        tmp_path / "sharded.ckpt", {"state_dict": {"model.w": torch.arange(6.0).reshape(2, 3)}, "step": 3}
    )
    torch.save({"hyper_parameters": {"method": "hycam"}, "global_step": 3}, folder / "meta.pt")
    checkpoint = read_checkpoint(folder)
    torch.testing.assert_close(checkpoint["state_dict"]["model.w"], torch.arange(6.0).reshape(2, 3))
    assert checkpoint["step"] == 3 and checkpoint["hyper_parameters"] == {"method": "hycam"}


def test_a_distributed_checkpoint_with_a_crafted_item_or_size_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    folder = _distributed_checkpoint(tmp_path / "items.ckpt", {"w": torch.ones(2), "extra": Payload(marker)})
    with pytest.raises(UnsafeCheckpointError, match=r"(io|builtins)\.open"):
        read_checkpoint(folder)
    assert not marker.exists()

    folder = _distributed_checkpoint(tmp_path / "sizes.ckpt", {"w": torch.ones(2)})
    metadata = (folder / ".metadata").read_bytes()
    from torch.distributed.checkpoint.metadata import Metadata

    loaded: Metadata = pickle.loads(metadata)  # our own file, written just above
    loaded.state_dict_metadata["w"].size = torch.Size([10**9, 10**3])
    (folder / ".metadata").write_bytes(pickle.dumps(loaded))
    with pytest.raises(UnsafeCheckpointError, match="declares 4,000,000,000,000 bytes"):
        read_checkpoint(folder)


def test_lightnings_own_load_goes_through_the_safe_loader(tmp_path):
    """The strategy's ``load_checkpoint`` (what ``trainer.fit(ckpt_path=...)`` calls) refuses a crafted file."""
    from lightning.pytorch import Trainer

    marker = tmp_path / "payload-ran"
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    install_safe_checkpoint_loading(trainer)
    with pytest.raises(UnsafeCheckpointError):
        trainer.strategy.load_checkpoint(crafted_file(tmp_path / "crafted.ckpt", marker))
    assert not marker.exists()
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"hycam": HyCAMConfig()}}, good)
    assert trainer.strategy.load_checkpoint(good)["hyper_parameters"]["hycam"] == HyCAMConfig()


def test_export_refuses_absurd_sizes_in_checkpoint_hyper_parameters_before_building(tmp_path):
    """A checkpoint whose hyper-parameters declare 10**9 experts used to build (and loop over) them on export."""
    from tests.tiny import tiny_byte_llama

    path = tmp_path / "huge.ckpt"
    method = {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"num_experts": 10**9, "rank": 4}}
    hparams = {"backbone": tiny_byte_llama(), "method": method}
    torch.save({"state_dict": {"model.w": torch.zeros(2, 4)}, "hyper_parameters": hparams}, path)
    result = run_hycam_in_process(["export", str(path), str(tmp_path / "adapter")], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "num_experts=1000000000 exceeds 65536" in _one_error_line(result.stderr)
