"""A ``hycam fit`` killed with SIGKILL mid-epoch and rerun with ``--ckpt_path last`` ends exactly where an
uninterrupted run ends (same adapter tensors), on CPU."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.reliability.helpers import hycam_command, hycam_env, run_config, run_hycam, write_config

pytestmark = pytest.mark.slow

MAX_STEPS = 14
EVERY = 3  # checkpoint every 3 optimizer steps
TASKS = [
    {"name": "arith", "source": "synthetic", "path": "arithmetic", "num_examples": 64}
]  # 44 train: 11 batches


def _config(root: Path) -> Path:
    config = run_config(
        root,
        TASKS,
        max_steps=MAX_STEPS,
        every_n_train_steps=EVERY,
        trainer={"limit_val_batches": 1, "val_check_interval": 5, "check_val_every_n_epoch": None},
    )
    root.mkdir(parents=True, exist_ok=True)
    return write_config(root / "config.yaml", config)


def _start(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*hycam_command(), "fit", "-c", str(config)],
        cwd=cwd,
        env=hycam_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_first_checkpoint(
    process: subprocess.Popen[str], checkpoint: Path, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint before exit/timeout:\n{process.communicate()[1][-3000:]}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def _adapter(root: Path) -> dict[str, torch.Tensor]:
    found = sorted((root / "runs").rglob("adapter/adapter_model.safetensors"))
    assert len(found) == 1, found
    return load_file(found[0])


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    straight_config, killed_config = _config(straight_root), _config(killed_root)
    straight = _start(straight_config, straight_root)  # runs alongside (one thread each, deterministic)
    try:
        victim = _start(killed_config, killed_root)
        _kill_after_first_checkpoint(victim, killed_root / "checkpoints" / "last.ckpt")
        assert victim.returncode == -signal.SIGKILL
        assert not list((killed_root / "runs").rglob("adapter_model.safetensors")), "killed after it finished"
        saved = torch.load(killed_root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert 0 < saved["global_step"] < MAX_STEPS and saved["global_step"] % 11 != 0, "not mid-epoch"

        resumed = run_hycam(["fit", "-c", str(killed_config), "--ckpt_path", "last"], cwd=killed_root)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "Restoring states from the checkpoint path" in resumed.stderr, resumed.stderr[-3000:]
    finally:
        _, straight_err = straight.communicate(timeout=300)
    assert straight.returncode == 0, straight_err[-3000:]

    expected, actual = _adapter(straight_root), _adapter(killed_root)
    assert expected.keys() == actual.keys()
    changed = [name for name, tensor in expected.items() if tensor.abs().sum() > 0]
    assert changed, "training did not move the adapter; the comparison would prove nothing"
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)
