"""The fit run's TensorBoard events hold the training, validation, routing and model-summary series."""

from __future__ import annotations

import math

import pytest

from tests.evaluation.conftest import LOG_EVERY, MAX_STEPS, TASKS, VAL_EVERY, TinyRun
from tests.evaluation.helpers import read_events, scalar_series


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


def test_routing_histograms_and_heatmaps(events, tiny_run: TinyRun):
    tags = events.Tags()
    K, L = tiny_run.num_experts, tiny_run.num_layers
    assert sorted(tags["histograms"]) == [f"router/layer_{i}/probs" for i in range(L)]
    for i in range(L):
        for event in events.Histograms(f"router/layer_{i}/probs"):
            value = event.histogram_value
            assert value.num > 0 and value.num % K == 0  # K probabilities per real token
            assert 0 <= value.min <= value.max <= 1
    assert sorted(tags["images"]) == ["router/layer_expert_load", "router/task_expert_usage"]
    load = events.Images("router/layer_expert_load")[-1]
    usage = events.Images("router/task_expert_usage")[-1]
    assert (load.height, load.width) == (16 * L, 16 * K)
    assert (usage.height, usage.width) == (16 * len(TASKS), 16 * K)
    assert load.encoded_image_string.startswith(b"\x89PNG")


def test_model_summary_counts(scalars):
    def count(component: str, kind: str) -> float:
        (value,) = scalars[f"model/params/{component}/{kind}"].values()
        return value

    parts = ("shared", "experts", "router")
    assert all(count(p, "trainable") > 0 and count(p, "frozen") == 0 for p in parts)
    assert count("backbone", "trainable") == 0 and count("backbone", "frozen") > 0
    assert count("total", "trainable") == sum(count(p, "trainable") for p in parts)
    assert count("total", "frozen") == count("backbone", "frozen")
