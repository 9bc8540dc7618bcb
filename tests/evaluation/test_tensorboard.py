"""The fit and test runs' TensorBoard events: training, validation and routing series, the routing views
(labelled heatmaps, Custom Scalars layout, routing table), the model summary and the HParams session."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from tests.evaluation.conftest import LOG_EVERY, MAX_STEPS, TASKS, VAL_EVERY, TinyRun
from tests.evaluation.helpers import (
    custom_scalar_charts,
    hparams_session,
    read_events,
    scalar_series,
    texts,
)


@pytest.fixture(scope="module")
def events(tiny_run: TinyRun):
    return read_events(tiny_run.fit_dir)


@pytest.fixture(scope="module")
def scalars(events) -> dict[str, dict[int, float]]:
    return scalar_series(events)


def test_training_and_validation_series(scalars, tiny_run: TinyRun):
    log_steps = list(range(LOG_EVERY - 1, MAX_STEPS, LOG_EVERY))
    val_steps = list(range(VAL_EVERY - 1, MAX_STEPS, VAL_EVERY))
    for tag in ("train/loss", "train/balance_loss", "train/lr"):
        assert sorted(scalars[tag]) == log_steps, tag
    for tag in ("val/loss", "val/ppl", *(f"val/{t}/{m}" for t in TASKS for m in ("loss", "ppl"))):
        assert sorted(scalars[tag]) == val_steps, tag
    for step in val_steps:
        for task in TASKS:
            loss, ppl = scalars[f"val/{task}/loss"][step], scalars[f"val/{task}/ppl"][step]
            assert ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert all(0 < lr for lr in scalars["train/lr"].values())


def test_routing_series_per_layer_and_task(scalars, tiny_run: TinyRun):
    K, layers = tiny_run.num_experts, range(tiny_run.num_layers)
    steps = sorted(scalars["train/loss"])  # router points share the x axis of train/loss
    for i in layers:
        assert sorted(scalars[f"router/layer_{i}/entropy"]) == steps
        for step in steps:
            loads = [scalars[f"router/layer_{i}/load/expert_{k}"][step] for k in range(K)]
            assert sum(loads) == pytest.approx(1.0, abs=1e-5)
            assert 0 <= scalars[f"router/layer_{i}/entropy"][step] <= math.log(K) + 1e-6
            assert 0 <= scalars[f"router/layer_{i}/load_entropy"][step] <= math.log(K) + 1e-6
    for tag in ("router/entropy", "router/load_entropy", "router/max_load", "router/balance_loss"):
        assert sorted(scalars[tag]) == steps, tag
    # L_bal is 1/K at perfect balance (sampled hard gates can dip below) and tracks the training loss term
    for step, value in scalars["router/balance_loss"].items():
        assert 0 < value <= 1.0
        assert value == pytest.approx(scalars["train/balance_loss"][step], abs=0.05)
    for task in TASKS:
        series = [scalars[f"router/task/{task}/expert_{k}"] for k in range(K)]
        assert series[0], task
        for step in series[0]:
            assert sum(s[step] for s in series) == pytest.approx(1.0, abs=1e-5)


def test_routing_histograms_and_labelled_heatmaps_at_each_validation(events, scalars, tiny_run: TinyRun):
    tags = events.Tags()
    L = tiny_run.num_layers
    assert sorted(tags["histograms"]) == [f"router/layer_{i}/probs" for i in range(L)]
    for i in range(L):
        for event in events.Histograms(f"router/layer_{i}/probs"):
            value = event.histogram_value
            assert value.num > 0 and value.num % tiny_run.num_experts == 0  # K probabilities per real token
            assert 0 <= value.min <= value.max <= 1
    assert sorted(tags["images"]) == ["router/layer_expert_load", "router/task_expert_usage"]
    for tag in tags["images"]:  # rendered figures, drawn at the validations only (same x values as val/loss)
        images = events.Images(tag)
        assert [image.step for image in images] == sorted(scalars["val/loss"]), tag
        for image in images:
            assert image.width >= 400 and image.height >= 200, tag
            assert image.encoded_image_string.startswith(b"\x89PNG")


def test_custom_scalars_chart_every_layer_with_its_k_expert_loads(events, scalars, tiny_run: TinyRun):
    charts = custom_scalar_charts(events)
    K, L = tiny_run.num_experts, tiny_run.num_layers
    per_layer = charts["router: expert load per layer"]
    assert len(per_layer) == L
    for i in range(L):
        (series,) = [tags for title, tags in per_layer.items() if title.startswith(f"layer {i}:")]
        assert len(series) == K
        # every series names exactly one logged scalar tag
        for k, regex in enumerate(series):
            assert [tag for tag in scalars if re.search(regex, tag)] == [f"router/layer_{i}/load/expert_{k}"]
    entropy = charts["router: entropy per layer"]
    (router_entropy,) = [tags for title, tags in entropy.items() if title.startswith("router entropy")]
    assert [[t for t in scalars if re.search(r, t)] for r in router_entropy] == [
        [f"router/layer_{i}/entropy"] for i in range(L)
    ]
    assert sorted(charts["router: expert usage per task"]) == sorted(
        f"{task}: share of tokens per expert" for task in TASKS
    )


def test_routing_table_in_the_text_tab_after_validation_and_test(events, scalars, tiny_run: TinyRun):
    fit_tables = texts(events, "router/table")
    assert sorted(fit_tables) == sorted(scalars["val/loss"])
    (test_table,) = texts(read_events(tiny_run.test_dir), "router/table").values()
    for table in (*fit_tables.values(), test_table):
        assert "| layer | all tasks | " + " | ".join(TASKS) + " |" in table
        for task in TASKS:
            assert f"| {task} |" in table  # one row per task in the task x expert shares
        for i in range(tiny_run.num_layers):
            assert re.search(rf"^\| {i} \| expert \d \(\d\.\d\d\) \|", table, re.MULTILINE)
    assert "validation examples, step" in fit_tables[max(fit_tables)]
    assert "test examples" in test_table


def test_hparams_tab_holds_the_method_and_real_metrics(events, scalars, tiny_run: TinyRun):
    params, metrics = hparams_session(events)
    config = yaml.safe_load(tiny_run.config.read_text())
    assert params["method"] == "hycam" and params["stage"] == "fit"
    assert params["method/class_path"].endswith("HyCAMMethod")
    assert params["method/num_experts"] == tiny_run.num_experts
    assert params["method/rank"] == config["model"]["method"]["init_args"]["rank"]
    assert params["learning_rate"] == pytest.approx(config["model"]["learning_rate"])
    assert params["seed"] == config["seed_everything"]
    assert params["data/tasks"] == ",".join(TASKS)
    assert (
        params["method/bias"] == 1
    )  # the options the method was built with, defaults included (bools as 0/1)
    assert "hp_metric" not in scalars  # no -1 placeholder
    assert "val/macro/loss" in metrics and "val/macro/loss" in scalars  # the tab reads the real series
    test_events = read_events(tiny_run.test_dir)
    test_params, test_metrics = hparams_session(test_events)
    assert test_params["stage"] == "test" and test_params["method"] == "hycam"
    assert test_params["ckpt_path"].endswith("last.ckpt")
    test_scalars = scalar_series(test_events)
    assert "hp_metric" not in test_scalars
    for metric in ("test/macro/task_score", "test/macro/exact_match", "test/macro/loss"):
        assert metric in test_metrics and metric in test_scalars


def test_model_summary_counts(scalars):
    def count(component: str, kind: str) -> float:
        (value,) = scalars[f"model/params/{component}/{kind}"].values()
        return value

    parts = ("shared", "experts", "router")
    assert all(count(p, "trainable") > 0 and count(p, "frozen") == 0 for p in parts)
    assert count("backbone", "trainable") == 0 and count("backbone", "frozen") > 0
    assert count("total", "trainable") == sum(count(p, "trainable") for p in parts)
    assert count("total", "frozen") == count("backbone", "frozen")
