"""The routing views' building blocks: the labelled heatmap, layer groups, the Markdown table, the Custom Scalars
layout and the flattened hyper-parameters."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hycam_pl.callbacks.heatmap import MISSING, figure_pixels, heatmap_figure
from hycam_pl.callbacks.hparams import flatten_hparams
from hycam_pl.callbacks.views import custom_scalar_layout, routing_markdown
from hycam_pl.metrics.routing import layer_groups

TASKS = ["arithmetic", "code", "qa"]


def test_heatmap_draws_task_names_values_and_a_fixed_scale():
    matrix = torch.tensor([[0.7, 0.1, 0.2], [0.25, 0.5, 0.25], [math.nan, math.nan, math.nan]])
    figure = heatmap_figure(
        matrix, TASKS, ["0", "1", "2"], title="usage, step 7", xlabel="expert index", ylabel="task"
    )
    axes, colorbar = figure.axes
    assert [label.get_text() for label in axes.get_yticklabels()] == TASKS
    assert [label.get_text() for label in axes.get_xticklabels()] == ["0", "1", "2"]
    cells = [text.get_text() for text in axes.texts]
    assert cells == ["0.70", "0.10", "0.20", "0.25", "0.50", "0.25", MISSING, MISSING, MISSING]
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (
        "usage, step 7",
        "expert index",
        "task",
    )
    assert axes.images[0].get_clim() == (0.0, 1.0)  # fixed limits: images of different steps compare
    assert colorbar.get_ylabel() == "share of tokens"
    height, width, channels = figure_pixels(figure).shape
    assert width >= 400 and height >= 150 and channels == 3


def test_heatmap_bolds_each_rows_largest_value_and_checks_its_labels():
    figure = heatmap_figure(
        [[0.2, 0.8], [0.6, 0.4]], ["0", "1"], ["0", "1"], title="t", xlabel="x", ylabel="y", bold_row_max=True
    )
    weights = [text.get_fontweight() for text in figure.axes[0].texts]
    assert weights == ["normal", "bold", "bold", "normal"]
    with pytest.raises(ValueError, match="row labels"):
        heatmap_figure([[0.5, 0.5]], ["a", "b"], ["0", "1"], title="t", xlabel="x", ylabel="y")


def test_layer_groups_are_contiguous_and_cover_every_layer():
    assert layer_groups([0, 1]) == [[0], [1]]
    assert layer_groups(list(range(10)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert layer_groups([3, 7, 9], 1) == [[3, 7, 9]]


def test_routing_markdown_names_each_layers_top_expert_overall_and_per_task():
    layers = [0, 5]
    load = torch.tensor([[0.1, 0.9], [0.6, 0.4]])
    usage = torch.tensor(
        [[[0.0, 1.0], [0.2, 0.8], [math.nan, math.nan]], [[0.7, 0.3], [0.4, 0.6], [math.nan, math.nan]]]
    )
    table = routing_markdown(
        "Routing on the validation examples, step 9", load, usage, layers, TASKS, max_groups=1
    )
    lines = table.splitlines()
    assert lines[0] == "**Routing on the validation examples, step 9**"
    assert "| layer | all tasks | arithmetic | code | qa |" in lines
    assert "| 0 | expert 1 (0.90) | expert 1 (1.00) | expert 1 (0.80) | – |" in lines
    assert "| 5 | expert 0 (0.60) | expert 0 (0.70) | expert 1 (0.60) | – |" in lines
    # one layer group holding both layers: the mean of their shares, most-used in bold
    assert "| 0–5 | arithmetic | 0.35 | **0.65** |" in lines
    assert "| 0–5 | code | 0.30 | **0.70** |" in lines
    assert "| 0–5 | qa | – | – |" in lines


def test_custom_scalar_series_match_exactly_one_tag():
    layout = custom_scalar_layout([2, 3], 11, ["a+b"])
    charts = layout["router: expert load per layer"]
    assert list(charts) == ["layer 2: share of tokens per expert", "layer 3: share of tokens per expert"]
    kind, series = charts["layer 2: share of tokens per expert"]
    assert kind == "Multiline" and len(series) == 11
    tags = [f"router/layer_2/load/expert_{k}" for k in range(11)]
    assert [[t for t in tags if re.search(regex, t)] for regex in series] == [[t] for t in tags]
    (task_series,) = [tags for _, tags in layout["router: expert usage per task"].values()]
    assert re.search(task_series[0], "router/task/a+b/expert_0")


def test_flatten_hparams_keeps_what_the_hparams_tab_can_show():
    params = {
        "method": "lora",
        "method_options": {"r": 8, "target_modules": ["q_proj", "v_proj"], "dropout": None},
        "hycam": None,
        "betas": (0.9, 0.95),
        "backbone": {"model_type": "llama", "layers": [{"a": 1}]},
        "learning_rate": 1e-3,
    }
    assert flatten_hparams(params) == {
        "method": "lora",
        "method_options/r": 8,
        "method_options/target_modules": "['q_proj', 'v_proj']",
        "betas": "[0.9, 0.95]",
        "backbone/model_type": "llama",
        "learning_rate": 1e-3,
    }
