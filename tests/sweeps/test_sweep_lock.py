"""One ``hycam sweep`` per sweep directory (issue 21): a second sweep on a directory a live sweep holds is refused
with one ``error:`` line naming the holder; a lock left by a crashed sweep is replaced; the lock is released
however the sweep ends."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hycam_pl.cli.sweep import main as sweep_main
from hycam_pl.sweeps import runner
from hycam_pl.sweeps.lock import LOCK_FILE, sweep_lock
from hycam_pl.sweeps.runner import run_sweep
from tests.sweeps.test_sweep_plan import _spec


def test_a_second_sweep_on_a_held_directory_is_refused_naming_the_holder(tmp_path: Path, monkeypatch, capsys):
    spec = _spec(tmp_path, tmp_path / "out")
    ran: list[str] = []
    monkeypatch.setattr(runner, "run_on_ray", lambda s, items, *a, **k: ran.extend(i.trial.id for i in items))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "out").mkdir()
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": 0}
        (tmp_path / "out" / LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(SystemExit) as exit_:
            sweep_main(["-c", str(tmp_path / "sweep.yaml")])
    finally:
        holder.kill()
        holder.wait()
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in errors[0], errors
    assert ran == [] and not (tmp_path / "out" / "trials").exists()

    # the holder is gone now: its lock is stale, the next sweep replaces it, runs, and releases it
    assert run_sweep(spec, cwd=tmp_path) == 1  # (nothing really trained: the trials stay unfinished)
    assert len(ran) == 4 and not (tmp_path / "out" / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_sweep_fails(tmp_path: Path, monkeypatch):
    spec = _spec(tmp_path, tmp_path / "out")

    def crash(*args, **kwargs):
        assert (tmp_path / "out" / LOCK_FILE).is_file()
        raise RuntimeError("ray died")

    monkeypatch.setattr(runner, "run_on_ray", crash)
    with pytest.raises(RuntimeError, match="ray died"):
        run_sweep(spec, cwd=tmp_path)
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    with sweep_lock(tmp_path / "out"):  # and it can be taken again
        pass
