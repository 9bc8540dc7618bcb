"""The GPU-only strategies on one CUDA GPU through the CLI: Lightning's ``fsdp`` and DeepSpeed ZeRO-3 (sharded
generation with ``synced_gpus``, trainable-only checkpoints), then ``hycam export`` of the checkpoint.
Skipped on CPU-only machines; ``scripts/gpu_check.sh`` runs them with the other strategies' smoke runs."""

from pathlib import Path

import pytest
import torch

from tests.training.conftest import REPO, run_cli, tiny_quickstart

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]


@pytest.mark.parametrize("overlay", ["fsdp", "deepspeed_zero3"])
def test_gpu_strategy_fits_tests_and_exports(tmp_path: Path, overlay: str):
    config = tiny_quickstart(tmp_path, max_steps=2, val_every=2)
    files = ("-c", str(config), "-c", str(REPO / "configs" / "trainer" / f"{overlay}.yaml"))
    gpu = ("--trainer.devices", "1")
    run_cli("fit", *files, *gpu, cwd=tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    result = run_cli("test", *files, *gpu, "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert "Per-task test results" in result.stdout
    run_cli("export", str(checkpoint), str(tmp_path / "adapter"), cwd=tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
