"""Planning a sweep without running it: the order trials run in, and finished trials recognised after the
sweep directory moved (committed results resumed in another checkout)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hycam_pl.sweeps import runner
from hycam_pl.sweeps.runner import plan, prepare, run_sweep
from hycam_pl.sweeps.spec import SweepError, load_sweep


def _spec(tmp_path: Path, output: Path, max_steps: int = 1):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "method": {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"num_experts": 2}}
                },
                "trainer": {"max_steps": max_steps},
            }
        )
    )
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "base": str(tmp_path / "base.yaml"),
                "output": str(output),
                "grid": {"model.method.num_experts": [1, 2]},
                "seeds": [0, 1],
                "metrics": ["macro/loss"],
            }
        )
    )
    return load_sweep(tmp_path / "sweep.yaml")


def test_finished_trial_counts_after_the_sweep_directory_moved(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tmp_path / "a" / "out")
    first = plan(spec, spec.output)[0]
    prepare(spec, first)
    (first.directory / "result.json").write_text(
        json.dumps({"status": "done", "metrics": {"macro/loss": 1.0}})
    )
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = _spec(tmp_path, tmp_path / "b" / "out")
    statuses = {item.trial.id: item.status for item in plan(moved, moved.output)}
    assert statuses == {
        "num_experts=1-seed=0": "done",
        "num_experts=1-seed=1": "pending",
        "num_experts=2-seed=0": "pending",
        "num_experts=2-seed=1": "pending",
    }
    edited = _spec(tmp_path, tmp_path / "b" / "out", max_steps=2)  # a real change is still refused
    with pytest.raises(SweepError, match="finished in .* with a different config"):
        plan(edited, edited.output)


def test_unfinished_trials_run_seed_major(tmp_path: Path, monkeypatch) -> None:
    spec = _spec(tmp_path, tmp_path / "out")
    ran: list[str] = []
    monkeypatch.setattr(runner, "run_on_ray", lambda s, items, *a, **k: ran.extend(i.trial.id for i in items))
    run_sweep(spec, cwd=tmp_path)
    assert ran == [
        "num_experts=1-seed=0",
        "num_experts=2-seed=0",
        "num_experts=1-seed=1",
        "num_experts=2-seed=1",
    ]
