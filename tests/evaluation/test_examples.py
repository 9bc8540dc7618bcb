"""``hycam test`` writes ``examples.jsonl``: one line per test example, with its stable id, its loss, and for
the generation sample its answer and scores; the per-example numbers add up to ``results.json``."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import yaml

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.metrics import read_examples
from tests.evaluation.conftest import TASKS, TinyRun
from tests.evaluation.helpers import read_events, scalar_series

PER_EXAMPLE_SCORES = ("exact_match", "rouge1", "rouge2", "rougeL", "task_score")


def _expected_test_ids(tiny_run: TinyRun) -> list[tuple[str, str]]:
    """The test split's ids as the datamodule of the run's own config gives them (no CLI involved)."""
    data = yaml.safe_load(tiny_run.config.read_text())["data"]
    datamodule = MultiTaskDataModule(**{**data, "cache_dir": None})
    datamodule.setup("test")
    return [
        (task, i)
        for batch in datamodule.test_dataloader()
        for task, i in zip((TASKS[t] for t in batch["task_ids"].tolist()), batch["example_ids"], strict=True)
    ]


def test_examples_jsonl_has_every_test_example_once_and_adds_up_to_results_json(tiny_run: TinyRun):
    rows = read_examples(tiny_run.test_dir / "examples.jsonl")
    results = json.loads((tiny_run.test_dir / "results.json").read_text())
    keys = [(row["task"], row["id"]) for row in rows]
    assert len(set(keys)) == len(keys) == 16  # 4 tasks x 4 test examples (40 records, 10 % test)
    assert sorted(keys) == sorted(_expected_test_ids(tiny_run))
    assert [row["task"] for row in rows] == [task for task in TASKS for _ in range(4)]  # file order: by task
    for task in TASKS:
        mine = [row for row in rows if row["task"] == task]
        assert all(row["id"].startswith(f"{task}:") for row in mine)  # <task>:<index>:<hash>
        loss = sum(row["loss_sum"] for row in mine) / sum(row["num_tokens"] for row in mine)
        assert loss == pytest.approx(results[task]["loss"], rel=1e-6)
        # the generation sample is every test example here (4 per task): each has its answer and scores
        assert all(isinstance(row["prediction"], str) and row["reference"] for row in mine)
        for metric in PER_EXAMPLE_SCORES:
            if results[task][metric] is None:  # not applicable to the task (qa: one-word answers, no rouge2)
                continue
            mean = sum(row[metric] for row in mine) / len(mine)
            assert mean == pytest.approx(results[task][metric], abs=1e-9), (task, metric)
        assert all(0.0 <= row["exact_match"] <= 1.0 and math.isfinite(row["loss_sum"]) for row in mine)
    assert "sacrebleu" not in rows[0]  # a corpus statistic: no per-example value
    assert f"per example: {tiny_run.test_dir / 'examples.jsonl'}" in tiny_run.test_stdout


def test_tensorboard_test_losses_match_the_per_example_sums(tiny_run: TinyRun):
    rows = read_examples(tiny_run.test_dir / "examples.jsonl")
    logged = scalar_series(read_events(tiny_run.test_dir))
    tokens = Counter()
    losses = Counter()
    for row in rows:
        tokens[row["task"]] += row["num_tokens"]
        losses[row["task"]] += row["loss_sum"]
    for task in TASKS:
        (value,) = logged[f"test/{task}/loss"].values()
        assert value == pytest.approx(losses[task] / tokens[task], rel=1e-5)
