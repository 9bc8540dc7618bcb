"""Two ``hycam fit --ckpt_path last`` continuing one run directory at once (issue 21): the second is refused with
one ``error:`` line naming the holder, instead of both writing one ``version_<n>/``; the lock goes with its
holder, however that ends."""

from __future__ import annotations

import subprocess
import sys

import torch

from hycam_pl.training.resume import RUN_LOCK, lock_run_directory
from tests.reliability.helpers import run_config, run_hycam_in_process, write_config

HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.write("pid 4242 on host elsewhere"); handle.flush()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_resume_of_one_run_directory_is_refused(tmp_path):
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
    config = run_config(tmp_path, trainer={"enable_checkpointing": True, "callbacks": [callback]})
    write_config(tmp_path / "config.yaml", config)
    run_dir = tmp_path / "runs" / "run" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 1}, run_dir / "checkpoints" / "last.ckpt")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir / RUN_LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_hycam_in_process(["fit", "-c", "config.yaml", "--ckpt_path", "last"], tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert str(run_dir) in errors[0] and "pid 4242 on host elsewhere" in errors[0], errors[0]
    lock_run_directory(run_dir)  # the holder is gone: the lock is free again (no stale file to clean up)
