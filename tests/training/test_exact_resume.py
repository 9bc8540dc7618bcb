"""Exact resume with validation on the checkpoint steps (the tiny config's own setting), through the CLI.

Validation draws from the global random generators (its DataLoader iterator takes a seed); a run resumed from
the checkpoint saved just before that validation does not replay the draw. The training noise (Gumbel) must
not depend on it: interrupted (SIGKILL after the validation) and resumed, the final adapter is bit-identical.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.reliability.helpers import SUBPROCESS_ENV

from .conftest import REPO, tiny_quickstart

pytestmark = pytest.mark.slow

MAX_STEPS, EVERY = 8, 4  # validation and checkpoint at step 4; 32 batches per epoch, so mid-epoch


def _hycam(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: the kill callback lives in tests/; OMP_NUM_THREADS=1 keeps both runs' float sums identical.
    env = {
        **os.environ,
        **SUBPROCESS_ENV,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "hycam_pl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _adapter(root: Path) -> dict[str, torch.Tensor]:
    found = sorted((root / "runs").rglob("adapter/adapter_model.safetensors"))
    assert len(found) == 1, found
    return load_file(found[0])


def test_resume_is_exact_when_validation_runs_on_checkpoint_steps(tmp_path: Path) -> None:
    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    for root in (straight_root, killed_root):
        root.mkdir()
    straight_config = tiny_quickstart(straight_root, max_steps=MAX_STEPS, val_every=EVERY)
    config = yaml.safe_load(tiny_quickstart(killed_root, max_steps=MAX_STEPS, val_every=EVERY).read_text())
    (checkpointing,) = [
        c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")
    ]
    assert (
        config["trainer"]["val_check_interval"] == checkpointing["init_args"]["every_n_train_steps"] == EVERY
    )
    config["trainer"]["callbacks"].append(
        {"class_path": "tests.training.interrupt.KillAfterValidation", "init_args": {"step": EVERY}}
    )
    killed_config = killed_root / "killed.yaml"
    killed_config.write_text(yaml.safe_dump(config, sort_keys=False))

    straight = _hycam(["fit", "-c", str(straight_config)], straight_root)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _hycam(["fit", "-c", str(killed_config)], killed_root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (checkpoint,) = sorted(killed_root.rglob("last.ckpt"))
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == EVERY
    resumed = _hycam(
        ["fit", "-c", str(killed_root / "tiny.yaml"), "--ckpt_path", str(checkpoint)], killed_root
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr

    expected, actual = _adapter(straight_root), _adapter(killed_root)
    assert expected.keys() == actual.keys()
    assert any(name.endswith("router.linear.weight") or ".router." in name for name in expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)
