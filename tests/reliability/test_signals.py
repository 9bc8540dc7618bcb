"""A terminated ``hycam fit`` never looks finished (issue 21): SIGTERM exits 143 and SIGINT 130 (Lightning alone
exits 0 on SIGTERM), ``last.ckpt`` stays a complete checkpoint of a step before the signal, and no adapter is
written; a completed fit's ``last.ckpt`` is its final step whatever the checkpoint interval."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from hycam_pl.training.checkpoints import read_checkpoint
from tests.reliability.helpers import hycam_command, hycam_env, run_config, run_hycam_in_process, write_config

MAX_STEPS = 400


def _wait_for(path, process=None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            if process is not None:
                process.kill()
                pytest.fail(f"no checkpoint before exit/timeout:\n{process.communicate()[1][-3000:]}")
            return
        time.sleep(0.05)


def _assert_interrupted_run(root) -> None:
    step = read_checkpoint(root / "checkpoints" / "last.ckpt")[
        "global_step"
    ]  # complete; the safe reader loads it
    assert 0 < step < MAX_STEPS
    assert not list((root / "runs").rglob("adapter_model.safetensors")), (
        "an interrupted fit wrote its adapter"
    )


@pytest.mark.slow
def test_sigterm_makes_hycam_fit_exit_143_with_a_consistent_last_checkpoint(tmp_path):
    """The console script in a fresh process, as a scheduler's pre-emption or ``timeout`` terminates it."""
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
    _wait_for(tmp_path / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    _assert_interrupted_run(tmp_path)


def test_sigint_makes_hycam_fit_exit_130(tmp_path):
    """Ctrl-C (in-process: the signal reaches this process's main thread, where ``hycam`` runs)."""
    write_config(tmp_path / "config.yaml", run_config(tmp_path, max_steps=MAX_STEPS, every_n_train_steps=1))
    running = threading.Event()

    def interrupt() -> None:
        _wait_for(tmp_path / "checkpoints" / "last.ckpt")
        if running.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt, daemon=True)
    running.set()
    sender.start()
    try:
        result = run_hycam_in_process(["fit", "-c", "config.yaml"], tmp_path)
    finally:
        running.clear()
    sender.join(timeout=5)
    assert result.returncode == 130, result.stderr[-3000:]
    _assert_interrupted_run(tmp_path)


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
