"""Routing views a person reads in TensorBoard: the Custom Scalars layout, the Markdown routing table, and the
two labelled heatmaps. Pure functions of the logged tags and the (layer, task, expert) shares."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from hycam_pl.callbacks.heatmap import figure_pixels, heatmap_figure
from hycam_pl.metrics.routing import layer_groups

LOAD_TAG = "router/layer_{layer}/load/expert_{expert}"
ENTROPY_TAG = "router/layer_{layer}/entropy"
LOAD_ENTROPY_TAG = "router/layer_{layer}/load_entropy"
TASK_TAG = "router/task/{task}/expert_{expert}"


def _exact(tag: str) -> str:
    """Custom Scalars series are regular expressions: anchor them so ``expert_1`` does not match ``expert_10``."""
    return f"^{re.escape(tag)}$"


def custom_scalar_layout(
    layers: Sequence[int], num_experts: int, task_names: Sequence[str]
) -> dict[str, dict[str, list[Any]]]:
    """``SummaryWriter.add_custom_scalars`` layout: per modulated layer one chart with its K expert loads, one
    chart of every layer's router entropy (and one of load entropy), and per task one chart of its K shares."""
    experts = range(num_experts)
    layout: dict[str, dict[str, list[Any]]] = {
        "router: expert load per layer": {
            f"layer {i}: share of tokens per expert": [
                "Multiline",
                [_exact(LOAD_TAG.format(layer=i, expert=k)) for k in experts],
            ]
            for i in layers
        },
        "router: entropy per layer": {
            "router entropy per layer (nats; log K = uniform)": [
                "Multiline",
                [_exact(ENTROPY_TAG.format(layer=i)) for i in layers],
            ],
            "load entropy per layer (nats; 0 = collapsed)": [
                "Multiline",
                [_exact(LOAD_ENTROPY_TAG.format(layer=i)) for i in layers],
            ],
        },
    }
    if task_names:
        layout["router: expert usage per task"] = {
            f"{name}: share of tokens per expert": [
                "Multiline",
                [_exact(TASK_TAG.format(task=name, expert=k)) for k in experts],
            ]
            for name in task_names
        }
    return layout


def _share(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def _top(shares: torch.Tensor) -> str:
    """``expert k (share)`` of the most-used expert, or a dash when there is no data."""
    if shares.numel() == 0 or bool(torch.isnan(shares).any()):
        return "–"
    return f"expert {int(shares.argmax())} ({float(shares.max()):.2f})"


def _task_tops(shares: torch.Tensor) -> set[int]:
    """The most-used expert of every task with data in a ``(T, K)`` matrix."""
    return {int(row.argmax()) for row in shares if not bool(torch.isnan(row).any())}


def routing_markdown(
    heading: str,
    load: torch.Tensor,
    usage: torch.Tensor,
    layers: Sequence[int],
    task_names: Sequence[str],
    max_groups: int = 4,
    task_nmi: torch.Tensor | None = None,
) -> str:
    """A Markdown report of where tokens went.

    Args:
        heading: first line, e.g. ``"Routing on the validation examples, step 99"``.
        load: ``(L, K)`` share of each layer's tokens per expert.
        usage: ``(L, T, K)`` share of each task's tokens per expert in each layer (NaN rows: task absent).
        layers: the L decoder layer indices; task_names: the T task names in task-id order.
        task_nmi: ``(L,)`` routing specialisation per layer (:func:`~hycam_pl.metrics.routing.task_expert_nmi`),
            shown as a last column and as its mean over layers when given and defined (two or more tasks).
    """
    num_experts = load.shape[-1]
    tasks = list(task_names)
    nmi = None if task_nmi is None or not tasks or bool(torch.isnan(task_nmi).any()) else task_nmi
    lines = [
        f"**{heading}**",
        "",
        "Most-used expert (share of tokens) of each decoder layer, over all tasks and per task:",
        "",
    ]
    header = "| layer | all tasks | " + " | ".join(tasks) + " |" if tasks else "| layer | all tasks |"
    lines.append(header + (" task NMI |" if nmi is not None else ""))
    lines.append("|---:|---|" + "---|" * len(tasks) + ("---:|" if nmi is not None else ""))
    for row, layer in enumerate(layers):
        cells = [_top(load[row])] + [_top(usage[row, t]) for t in range(len(tasks))]
        cells += [f"{float(nmi[row]):.2f}"] if nmi is not None else []
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if tasks:
        differ = sum(len(_task_tops(usage[row])) > 1 for row in range(len(layers)))
        lines += ["", f"The tasks' most-used experts differ in {differ} of {len(layers)} layers."]
    if nmi is not None:
        lines += [
            "",
            f"Routing specialisation (task NMI): {float(nmi.mean()):.2f}, mean over layers: the mutual information "
            "between a token's task and its expert, divided by min(H(task), H(expert)); 0 = the expert says "
            "nothing about the task, 1 = each task has an expert of its own.",
        ]
    if tasks:
        lines += ["", "Task × expert shares per layer group (most-used expert in bold):", ""]
        lines.append("| layers | task | " + " | ".join(f"expert {k}" for k in range(num_experts)) + " |")
        lines.append("|---|---|" + "---:|" * num_experts)
        position = {layer: row for row, layer in enumerate(layers)}
        for group in layer_groups(list(layers), max_groups):
            rows = [position[i] for i in group]
            name = str(group[0]) if len(group) == 1 else f"{group[0]}–{group[-1]}"
            shares = usage[rows].mean(0)  # (T, K): the group's layers weigh equally (same tokens each)
            for t, task in enumerate(tasks):
                values = shares[t]
                best = -1 if bool(torch.isnan(values).any()) else int(values.argmax())
                cells = [
                    f"**{_share(float(v))}**" if k == best else _share(float(v)) for k, v in enumerate(values)
                ]
                lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap_images(
    title: str,
    load: torch.Tensor,
    task_usage: torch.Tensor | None,
    layers: Sequence[int],
    task_names: Sequence[str],
) -> dict[str, Any]:
    """The ``router/layer_expert_load`` and ``router/task_expert_usage`` images (HWC uint8), labelled; each
    row's most-used expert is written in bold."""
    experts = [str(k) for k in range(load.shape[-1])]
    images = {
        "router/layer_expert_load": heatmap_figure(
            load,
            [str(i) for i in layers],
            experts,
            title=f"expert load per layer: {title}",
            xlabel="expert index",
            ylabel="decoder layer index",
            bold_row_max=True,
        )
    }
    if task_usage is not None and task_names and not bool(torch.isnan(task_usage).all()):
        images["router/task_expert_usage"] = heatmap_figure(
            task_usage,
            list(task_names),
            experts,
            title=f"task × expert usage (all layers): {title}",
            xlabel="expert index",
            ylabel="task",
            bold_row_max=True,
        )
    return {tag: figure_pixels(figure) for tag, figure in images.items()}
