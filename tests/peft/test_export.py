"""``hycam fit``'s adapter and ``hycam export``'s folder are peft folders: ``PeftModel.from_pretrained`` on a fresh
base model reproduces the trained model's logits exactly (after ``import hycam_pl.peft``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

import hycam_pl.peft  # noqa: F401
from hycam_pl.backbone import load_backbone
from hycam_pl.training.export import module_from_checkpoint, read_checkpoint
from tests.reliability.helpers import run_config, run_hycam_in_process, write_config


def trained_and_loaded_logits(checkpoint_path: Path, adapter_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    checkpoint = read_checkpoint(checkpoint_path)
    trained = module_from_checkpoint(checkpoint)
    trained.model.requires_grad_(False)
    trained.load_state_dict(checkpoint["state_dict"], strict=False)
    base = load_backbone(trained.hparams.backbone, init_seed=trained.hparams.init_seed)
    loaded = PeftModel.from_pretrained(base, adapter_dir)
    ids = torch.randint(1, 384, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return trained.model.eval()(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hycam", "cam"])
def test_fit_adapter_and_export_are_peft_folders(tmp_path, method):
    config = run_config(tmp_path, max_steps=2, every_n_train_steps=2, model={"method": method})
    write_config(tmp_path / "config.yaml", config)
    result = run_hycam_in_process(["fit", "-c", "config.yaml"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    result = run_hycam_in_process(["export", str(checkpoint), str(tmp_path / "exported")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (fit_adapter,) = tmp_path.glob("runs/*/version_0/adapter")
    for folder in (fit_adapter, tmp_path / "exported"):
        expected, actual = trained_and_loaded_logits(checkpoint, folder)
        assert torch.equal(actual, expected), folder
    # A re-export over the previous export is recognised as the same kind of adapter (hycam).
    result = run_hycam_in_process(["export", str(checkpoint), str(tmp_path / "exported")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
