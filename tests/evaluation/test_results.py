"""``hycam test`` writes per-task results (every task, every metric, a macro row) and prints the table."""

from __future__ import annotations

import json
import math

import pytest

from tests.evaluation.conftest import METRICS, TASKS, TinyRun


def test_results_json_has_every_task_and_metric_and_a_macro_row(tiny_run: TinyRun):
    results = json.loads((tiny_run.test_dir / "results.json").read_text())
    assert list(results) == [*TASKS, "macro"]
    for task, values in results.items():
        assert list(values) == list(METRICS), task
        for metric in METRICS:
            assert isinstance(values[metric], float) and math.isfinite(values[metric]), (task, metric)
        assert values["ppl"] == pytest.approx(math.exp(values["loss"]), rel=1e-4) or task == "macro"
        for metric in ("bleu4", "rouge1", "rouge2", "rougeL", "exact_match", "task_score"):
            assert 0.0 <= values[metric] <= 1.0, (task, metric)
    for metric in METRICS:  # the macro row is the unweighted mean over tasks
        mean = sum(results[task][metric] for task in TASKS) / len(TASKS)
        assert results["macro"][metric] == pytest.approx(mean, rel=1e-6, abs=1e-12)
    assert 0 < results["macro"]["loss"] < 2 * math.log(384)  # a tiny byte model: about log(vocab)


def test_results_md_is_the_table_printed_to_stdout(tiny_run: TinyRun):
    table = (tiny_run.test_dir / "results.md").read_text().strip().splitlines()
    assert table[0] == "| " + " | ".join(["task", *METRICS]) + " |"
    rows = [line.split("|")[1].strip() for line in table[2:]]
    assert rows == [*TASKS, "**macro**"]
    stdout = tiny_run.test_stdout
    assert "Per-task test results" in stdout
    assert str(tiny_run.test_dir / "results.json") in stdout
    start = stdout.index(table[0])
    assert stdout[start:].splitlines()[: len(table)] == table
