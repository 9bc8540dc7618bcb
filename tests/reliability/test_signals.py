"""A terminated ``hycam fit`` never looks finished (issue 21): SIGTERM exits 143 and SIGINT 130 (Lightning alone
exits 0 on SIGTERM), ``last.ckpt`` stays a complete checkpoint of a step before the signal, and no adapter is
written; a completed fit's ``last.ckpt`` is its final step whatever the checkpoint interval."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from hycam_pl.training.checkpoints import read_checkpoint
from tests.reliability.helpers import hycam_command, hycam_env, run_config, run_hycam_in_process, write_config

MAX_STEPS = 400


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_terminated_fit_exits_non_zero_with_a_consistent_last_checkpoint(tmp_path, signum, code):
    config = write_config(
        tmp_path / "config.yaml", run_config(tmp_path, max_steps=MAX_STEPS, every_n_train_steps=1)
    )
    process = subprocess.Popen(
        [*hycam_command(), "fit", "-c", str(config)],
        cwd=tmp_path,
        env=hycam_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint before exit/timeout:\n{process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    step = read_checkpoint(last)["global_step"]  # complete, and loads through the safe reader
    assert 0 < step < MAX_STEPS
    assert not list((tmp_path / "runs").rglob("adapter_model.safetensors")), (
        "an interrupted fit wrote its adapter"
    )


def test_last_checkpoint_is_the_final_step_whatever_the_interval(tmp_path):
    """max_steps=3 with a checkpoint every 2 steps: last.ckpt used to stay at step 2 while adapter/ had step 3."""
    write_config(tmp_path / "config.yaml", run_config(tmp_path, max_steps=3, every_n_train_steps=2))
    result = run_hycam_in_process(["fit", "-c", "config.yaml"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 3
    (adapter,) = sorted((tmp_path / "runs").rglob("adapter/adapter_model.safetensors"))
    exported = load_file(adapter)
    state = checkpoint["state_dict"]
    matched = 0
    for key, tensor in exported.items():  # adapter keys "layers.<i>.<path>" end the checkpoint's module keys
        candidates = [k for k in state if k.endswith(key.split(".", 2)[2]) and f".{key.split('.')[1]}." in k]
        assert len(candidates) == 1, (key, candidates)
        torch.testing.assert_close(state[candidates[0]], tensor, rtol=0, atol=0, msg=key)
        matched += 1
    assert matched == len(exported) > 0
