"""Aggregation on hand-made trial results: means and sample standard deviations over seeds, the tables, the
plots and the HParams runs, without running any trial."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from hycam_pl.sweeps.aggregate import aggregate, group_stats, read_record
from hycam_pl.sweeps.runner import trial_dir
from hycam_pl.sweeps.spec import load_sweep

# task_score per (variant, num_experts) over seeds 0, 1, 2; None = that seed failed
SCORES = {
    ("a", 1): [0.10, 0.20, 0.40],
    ("a", 2): [0.50, 0.50, None],
    ("b", 1): [0.30, None, None],
    ("b", 2): [1.00, 0.00, 0.50],
}


@pytest.fixture
def made(tmp_path: Path) -> tuple:
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "method": {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"num_experts": 2}}
                }
            }
        )
    )
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "base": str(tmp_path / "base.yaml"),
                "output": str(tmp_path / "out"),
                "grid": {"model.method.num_experts": [1, 2]},
                "variants": {"a": {}, "b": {"model.method.rank": 4}},
                "seeds": [0, 1, 2],
                "metrics": ["macro/task_score", "macro/loss"],
            }
        )
    )
    spec = load_sweep(tmp_path / "sweep.yaml")
    for trial in spec.trials():
        directory = trial_dir(spec.output, trial)
        directory.mkdir(parents=True)
        score = SCORES[(trial.variant, trial.point["model.method.num_experts"])][trial.seed]
        if score is None:
            marker = {"status": "failed", "stage": "test", "exit_code": 1, "error": "boom", "fit_s": 1.0}
            (directory / "failed.json").write_text(json.dumps(marker))
        else:
            metrics = {"macro/task_score": score, "macro/loss": 2.0 - score, "qa/task_score": 9.0}
            (directory / "result.json").write_text(
                json.dumps({"status": "done", "metrics": metrics, "fit_s": 3.0, "test_s": 1.5})
            )
    records = [read_record(t, trial_dir(spec.output, t)) for t in spec.trials()]
    return spec, records


def test_means_and_sample_std(made: tuple) -> None:
    spec, records = made
    assert [r.status for r in records].count("failed") == 3
    stats = {(g.variant, g.point["model.method.num_experts"]): g for g in group_stats(records, spec.metrics)}
    assert set(stats) == set(SCORES)
    # a/1: 0.1, 0.2, 0.4 -> mean 0.7/3; deviations -0.4/3, -0.1/3, 0.5/3; sample std sqrt(0.42/9 / 2) = 0.1528
    a1 = stats[("a", 1)]
    assert a1.mean["macro/task_score"] == pytest.approx(0.7 / 3)
    assert a1.std["macro/task_score"] == pytest.approx(math.sqrt(0.42 / 9 / 2))
    assert a1.std["macro/task_score"] == pytest.approx(0.152753, abs=1e-6)
    assert a1.std["macro/loss"] == pytest.approx(a1.std["macro/task_score"])
    for key, scores in SCORES.items():
        values = [s for s in scores if s is not None]
        group = stats[key]
        assert group.finished == len(values) and group.seeds == 3
        assert group.count["macro/task_score"] == len(values)
        assert group.mean["macro/task_score"] == pytest.approx(statistics.fmean(values))
        expected = statistics.stdev(values) if len(values) > 1 else None
        assert group.std["macro/task_score"] == (pytest.approx(expected) if expected is not None else None)
    assert stats[("a", 2)].std["macro/task_score"] == 0.0  # two equal values
    assert stats[("b", 1)].std["macro/task_score"] is None  # one finished seed: undefined, not 0


def test_written_outputs(made: tuple) -> None:
    spec, records = made
    outputs = aggregate(spec, records, spec.output)
    rows = list(csv.DictReader(outputs["csv"].open()))
    assert len(rows) == 12
    assert rows[0]["trial"] == "a-num_experts=1-seed=0" and rows[0]["variant"] == "a"
    assert [r["status"] for r in rows].count("failed") == 3
    assert {r["error"] for r in rows if r["status"] == "failed"} == {"boom"}
    markdown = outputs["md"].read_text()
    assert "| a | 1 | 3/3 | 0.2333 ± 0.1528 | 1.7667 ± 0.1528 |" in markdown
    assert "| b | 1 | 1/3 | 0.3000 (n=1) |" in markdown
    assert "| b | 2 | 3/3 | 0.5000 ± 0.5000 |" in markdown
    assert "ddof=1" in markdown and "## Failed trials" in markdown
    assert [p.name for p in outputs["plots"]] == ["plot_macro_task_score.png", "plot_macro_loss.png"]
    assert sorted(p.name for p in outputs["hparams"].iterdir()) == sorted(
        r.trial.id for r in records if r.status == "done"
    )
    # rebuilt, not appended to: aggregating again leaves one event file per trial
    aggregate(spec, records, spec.output)
    assert all(len(list(d.iterdir())) == 1 for d in outputs["hparams"].iterdir())


def test_variants_only_sweep(tmp_path: Path) -> None:
    """A method comparison (variants, no grid): one group per variant, one point per variant on the plot."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"method": "hycam"}}))
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "base": str(tmp_path / "base.yaml"),
                "output": str(tmp_path / "out"),
                "variants": {"cam": {"model.method": "cam"}, "hycam": {}},
                "seeds": [0, 1],
                "metrics": ["macro/task_score"],
            }
        )
    )
    spec = load_sweep(tmp_path / "sweep.yaml")
    assert [t.id for t in spec.trials()] == ["cam-seed=0", "cam-seed=1", "hycam-seed=0", "hycam-seed=1"]
    for trial, score in zip(spec.trials(), [0.25, 0.75, 0.5, 0.5], strict=True):
        directory = trial_dir(spec.output, trial)
        directory.mkdir(parents=True)
        metrics = {"macro/task_score": score}
        (directory / "result.json").write_text(json.dumps({"status": "done", "metrics": metrics}))
    records = [read_record(t, trial_dir(spec.output, t)) for t in spec.trials()]
    outputs = aggregate(spec, records, spec.output)
    markdown = outputs["md"].read_text()
    assert "| cam | 2/2 | 0.5000 ± 0.3536 |" in markdown  # sample std of 0.25, 0.75 = 0.25 * sqrt(2)
    assert "| hycam | 2/2 | 0.5000 ± 0.0000 |" in markdown
    assert outputs["plots"][0].stat().st_size > 1000
