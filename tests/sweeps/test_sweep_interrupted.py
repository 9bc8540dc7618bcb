"""A trial whose ``hycam fit`` was terminated (exit 143/130, or killed by a signal) is recorded as interrupted,
never as done or failed, is not tested, and runs again on the next ``hycam sweep``, resuming from its last.ckpt
(issue 21: Lightning's SIGTERM exit 0 used to make such a trial count as done)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hycam_pl.sweeps import trial as trial_module
from hycam_pl.sweeps.aggregate import read_record
from hycam_pl.sweeps.runner import payload, plan, prepare
from tests.sweeps.test_sweep_plan import _spec


@pytest.mark.parametrize("code", [143, 130, -9])
def test_a_terminated_fit_is_recorded_interrupted_and_runs_again(
    tmp_path: Path, monkeypatch, code: int
) -> None:
    spec = _spec(tmp_path, tmp_path / "out")
    item = plan(spec, spec.output)[0]
    prepare(spec, item)
    stages: list[str] = []

    def fake_run(argv, **kwargs):
        stages.append(argv[3])
        (item.directory / "checkpoints").mkdir(exist_ok=True)
        (item.directory / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint of an earlier step")
        return subprocess.CompletedProcess(argv, code)

    monkeypatch.setattr(trial_module.subprocess, "run", fake_run)
    outcome = trial_module.execute(payload(spec, item, tmp_path))
    assert outcome["status"] == "interrupted" and stages == ["fit"], (outcome, stages)
    assert not (item.directory / "result.json").exists() and not (item.directory / "failed.json").exists()
    assert read_record(item.trial, item.directory).status == "interrupted"
    again = plan(spec, spec.output)[0]
    assert again.status == "pending" and again.resume
