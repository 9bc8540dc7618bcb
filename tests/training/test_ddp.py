"""Two-process DDP on CPU (gloo) through the real CLI: the multi-GPU code path, simulated."""

import torch

from .conftest import run_cli, tiny_quickstart


def test_ddp_fit_on_two_cpu_processes(tmp_path):
    config = tiny_quickstart(tmp_path, max_steps=4, val_every=2)
    run_cli("fit", "-c", str(config), "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    assert checkpoint["MultiTaskDataModule"]["world_size"] == 2
    assert all(".hycam." in key for key in checkpoint["state_dict"])
    assert (tmp_path / "runs" / "tiny" / "version_0" / "adapter" / "adapter_model.safetensors").is_file()
