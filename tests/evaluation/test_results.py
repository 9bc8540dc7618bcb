"""``hycam test`` writes per-task results (every task, every metric, a macro row) and prints the table."""

from __future__ import annotations

import json
import math

import pytest

from hycam_pl.metrics import format_value
from tests.evaluation.conftest import METRICS, TASKS, TinyRun
from tests.evaluation.helpers import read_events, scalar_series, texts

# The synthetic qa task answers in one word: BLEU-4 and ROUGE-2 cannot score it (README "Metrics").
NOT_APPLICABLE = {"qa": {"sacrebleu", "rouge2"}}


def test_results_json_has_every_task_and_metric_and_a_macro_row(tiny_run: TinyRun):
    results = json.loads((tiny_run.test_dir / "results.json").read_text())
    assert list(results) == [*TASKS, "macro", "routing"]  # routing: see the specialisation test below
    results.pop("routing")
    for task, values in results.items():
        assert list(values) == list(METRICS), task
        for metric in METRICS:
            if metric in NOT_APPLICABLE.get(task, ()):
                assert values[metric] is None, (task, metric)  # n/a, not 0
                continue
            assert isinstance(values[metric], float) and math.isfinite(values[metric]), (task, metric)
            if metric not in ("loss", "ppl"):
                assert 0.0 <= values[metric] <= 1.0, (task, metric)
        assert values["ppl"] == pytest.approx(math.exp(values["loss"]), rel=1e-4) or task == "macro"
    for metric in METRICS:  # the macro row is the unweighted mean over the tasks it applies to
        applicable = [task for task in TASKS if metric not in NOT_APPLICABLE.get(task, ())]
        mean = sum(results[task][metric] for task in applicable) / len(applicable)
        assert results["macro"][metric] == pytest.approx(mean, rel=1e-6, abs=1e-12)
    assert 0 < results["macro"]["loss"] < 2 * math.log(384)  # a tiny byte model: about log(vocab)


def test_results_md_is_the_table_printed_to_stdout(tiny_run: TinyRun):
    text = (tiny_run.test_dir / "results.md").read_text().strip()
    table = [line for line in text.splitlines() if line.startswith("|")]  # then the routing line
    assert table[0] == "| " + " | ".join(["task", *METRICS]) + " |"
    rows = [line.split("|")[1].strip() for line in table[2:]]
    assert rows == [*TASKS, "**macro**"]
    for line in table[2:]:
        task, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        marked = {metric for metric, cell in zip(METRICS, cells) if cell == "n/a"}
        assert marked == NOT_APPLICABLE.get(task, set()), task
    stdout = tiny_run.test_stdout
    assert "Per-task test results" in stdout
    assert str(tiny_run.test_dir / "results.json") in stdout
    start = stdout.index(table[0])
    assert stdout[start:].splitlines()[: len(table)] == table


def test_tensorboard_has_the_test_metrics_except_not_applicable_ones(tiny_run: TinyRun):
    results = json.loads((tiny_run.test_dir / "results.json").read_text())
    logged = scalar_series(read_events(tiny_run.test_dir))
    for task in (*TASKS, "macro"):
        for metric in METRICS:
            tag = f"test/{task}/{metric}"
            if metric in NOT_APPLICABLE.get(task, ()):
                assert tag not in logged, tag  # nothing to log: not a fake 0
            else:
                (value,) = logged[tag].values()
                assert value == pytest.approx(results[task][metric], rel=1e-5, abs=1e-6), tag


def test_routing_specialisation_in_results_and_tensorboard(tiny_run: TinyRun):
    """Per layer and as the mean over layers: in results.json, as test scalars, below the table and in the
    routing text table (the values themselves are tested in tests/metrics and test_routing_callback.py)."""
    routing = json.loads((tiny_run.test_dir / "results.json").read_text())["routing"]
    layers = [f"task_nmi/layer_{i}" for i in range(tiny_run.num_layers)]
    assert list(routing) == ["task_nmi", *layers]
    assert all(0.0 <= routing[name] <= 1.0 for name in routing)
    assert routing["task_nmi"] == pytest.approx(sum(routing[name] for name in layers) / len(layers))
    events = read_events(tiny_run.test_dir)
    logged = scalar_series(events)
    assert list(logged["test/router/task_nmi"].values()) == [pytest.approx(routing["task_nmi"], rel=1e-5)]
    for i in range(tiny_run.num_layers):
        (value,) = logged[f"test/router/layer_{i}/task_nmi"].values()
        assert value == pytest.approx(routing[f"task_nmi/layer_{i}"], rel=1e-5)
    markdown = (tiny_run.test_dir / "results.md").read_text()
    assert "Routing specialisation (task NMI, 0 = routing ignores the task" in markdown
    assert f"{format_value(routing['task_nmi'])}, mean over layers; per layer 0: " in markdown
    (table,) = texts(events, "router/table").values()
    assert f"Routing specialisation (task NMI): {routing['task_nmi']:.2f}" in table
