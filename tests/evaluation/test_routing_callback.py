"""``RoutingTelemetry`` against real routing: a pinned (collapsed / uniform) router, windows, accumulation."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hycam_pl.callbacks import RoutingTelemetry
from hycam_pl.modulation import balance_loss, modulated_layers, routing_statistics
from tests.evaluation.helpers import (
    TASK_NAMES,
    TinyData,
    TinyLM,
    custom_scalar_charts,
    random_batches,
    read_events,
    scalar_series,
    texts,
    tiny_trainer,
)

K = 4
LAYERS = (0, 1)


class RoutingSpy(L.Callback):
    """Keeps each training batch's routing statistics and ``L_bal``, as the library reports them."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stats = routing_statistics(pl_module.model)
        with torch.no_grad():
            aux = float(balance_loss(pl_module.model))
        self.batches.append(
            {
                "global_step": trainer.global_step,
                "gate": {i: s.gate_sum.clone() for i, s in stats.items()},
                "tokens": {i: float(s.tokens) for i, s in stats.items()},
                "balance_loss": aux,
            }
        )


def fit(tmp_path, module: L.LightningModule, telemetry: RoutingTelemetry, num_batches: int = 4, **kwargs):
    spy = RoutingSpy()
    trainer = tiny_trainer(tmp_path, [telemetry, spy], max_steps=num_batches, **kwargs)
    trainer.fit(module, datamodule=TinyData(num_batches * kwargs.get("accumulate_grad_batches", 1)))
    return scalar_series(read_events(tmp_path / "tiny" / "version_0")), spy


def test_collapsed_router_logs_full_load_zero_entropy_and_warns_after_patience(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hycam_pl.callbacks.routing")
    telemetry = RoutingTelemetry(every_n_steps=1, collapse_patience=3)
    scalars, _ = fit(tmp_path, TinyLM(router_bias=[30.0, 0.0, 0.0, 0.0]), telemetry, num_batches=4)

    steps = [0, 1, 2, 3]  # Lightning's step axis: the same x values as ``train/loss``
    assert sorted(scalars["router/entropy"]) == steps == sorted(scalars["train/loss"])
    for i in LAYERS:
        for step in steps:
            assert scalars[f"router/layer_{i}/load/expert_0"][step] == pytest.approx(1.0, abs=1e-6)
            for k in range(1, K):
                assert scalars[f"router/layer_{i}/load/expert_{k}"][step] == pytest.approx(0.0, abs=1e-6)
            assert scalars[f"router/layer_{i}/entropy"][step] == pytest.approx(0.0, abs=1e-6)
            assert scalars[f"router/layer_{i}/load_entropy"][step] == pytest.approx(0.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in scalars["router/max_load"].values())
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in scalars["router/balance_loss"].values())
    for name in TASK_NAMES:  # every task also uses only expert 0
        assert all(
            v == pytest.approx(1.0, abs=1e-6) for v in scalars[f"router/task/{name}/expert_0"].values()
        )

    warnings = [r.getMessage() for r in caplog.records if "router collapse" in r.getMessage()]
    assert len(warnings) == len(LAYERS)  # once per layer when patience is reached, not again at the 4th log
    for i, message in zip(LAYERS, warnings):
        assert f"layer {i} sent 100% of tokens to expert 0" in message
        assert "(step 2)" in message  # the third consecutive log


def test_collapse_warning_waits_for_patience(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hycam_pl.callbacks.routing")
    fit(tmp_path, TinyLM(router_bias=[30.0, 0, 0, 0]), RoutingTelemetry(every_n_steps=1, collapse_patience=5))
    assert not [r for r in caplog.records if "router collapse" in r.getMessage()]


def test_uniform_router_has_entropy_log_k_and_minimal_balance_loss(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hycam_pl.callbacks.routing")
    scalars, _ = fit(tmp_path, TinyLM(router_bias=[0.0] * K), RoutingTelemetry(every_n_steps=1))
    for i in LAYERS:
        for step, value in scalars[f"router/layer_{i}/entropy"].items():
            assert value == pytest.approx(math.log(K), rel=1e-5)
            loads = [scalars[f"router/layer_{i}/load/expert_{k}"][step] for k in range(K)]
            assert sum(loads) == pytest.approx(1.0, abs=1e-5)
            assert max(loads) < 0.9  # hard Gumbel samples spread tokens over the experts
    assert all(v == pytest.approx(math.log(K), rel=1e-5) for v in scalars["router/entropy"].values())
    # sum_k mean(g_k) * 1/K = 1/K whatever the sampled gates: the minimum of L_bal
    assert all(v == pytest.approx(1 / K, rel=1e-5) for v in scalars["router/balance_loss"].values())
    assert not [r for r in caplog.records if "router collapse" in r.getMessage()]


def test_window_pools_every_batch_since_the_last_log(tmp_path):
    """Logged loads are the token-weighted mean over the window's batches, not the last batch's."""
    scalars, spy = fit(tmp_path, TinyLM(seed=1), RoutingTelemetry(every_n_steps=2), num_batches=4)
    assert sorted(scalars["router/entropy"]) == [1, 3]  # logged at global steps 2 and 4
    for step, window in ((1, spy.batches[0:2]), (3, spy.batches[2:4])):
        gates = torch.stack([torch.stack([b["gate"][i] for b in window]).sum(0) for i in LAYERS])
        tokens = torch.tensor([sum(b["tokens"][i] for b in window) for i in LAYERS])
        load = gates / tokens.unsqueeze(-1)
        for row, i in enumerate(LAYERS):
            got = [scalars[f"router/layer_{i}/load/expert_{k}"][step] for k in range(K)]
            assert got == pytest.approx(load[row].tolist(), abs=1e-6)
        total = tokens.sum()
        expected = float((gates.sum(0) / total).sum())  # sanity: gates of a window sum to its tokens
        assert expected == pytest.approx(1.0, abs=1e-5)


def test_one_batch_window_balance_loss_matches_the_training_loss_term(tmp_path):
    scalars, spy = fit(tmp_path, TinyLM(seed=2), RoutingTelemetry(every_n_steps=1), num_batches=3)
    for step, batch in enumerate(spy.batches):
        assert scalars["router/balance_loss"][step] == pytest.approx(batch["balance_loss"], rel=1e-5)


def test_gradient_accumulation_logs_once_per_optimizer_step(tmp_path):
    scalars, spy = fit(
        tmp_path, TinyLM(seed=3), RoutingTelemetry(every_n_steps=1), num_batches=3, accumulate_grad_batches=2
    )
    assert len(spy.batches) == 6
    assert sorted(scalars["router/entropy"]) == [0, 1, 2]
    # each point pools both micro-batches of its optimizer step
    for step in range(3):
        window = spy.batches[2 * step : 2 * step + 2]
        gate = sum(b["gate"][0] for b in window)
        tokens = sum(b["tokens"][0] for b in window)
        got = [scalars[f"router/layer_0/load/expert_{k}"][step] for k in range(K)]
        assert got == pytest.approx((gate / tokens).tolist(), abs=1e-6)


def test_histograms_describe_real_tokens_and_training_draws_no_figures(tmp_path):
    fit(tmp_path, TinyLM(router_bias=[30.0, 0, 0, 0]), RoutingTelemetry(every_n_steps=2), num_batches=2)
    events = read_events(tmp_path / "tiny" / "version_0")
    batch = TinyData(2).batches[1]
    real_tokens = int(batch["attention_mask"].sum())
    for i in LAYERS:
        (histogram,) = events.Histograms(f"router/layer_{i}/probs")
        value = histogram.histogram_value
        assert value.num == real_tokens * K  # padding excluded; one probability per token and expert
        assert value.min >= 0 and value.max == pytest.approx(1.0)
        assert value.bucket[-1] == real_tokens and value.bucket[0] == real_tokens * (K - 1)
    assert events.Tags()["images"] == []  # figures are drawn at validation and test only


class ValidatedLM(TinyLM):
    """``TinyLM`` with a validation step (a forward, like ``MultiTaskLM``'s teacher-forced loss)."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


class ValidatedData(TinyData):
    def __init__(self, num_batches: int, tasks: tuple[int, ...]) -> None:
        super().__init__(num_batches)
        self.val_batches = random_batches(3, seed=5)
        for batch in self.val_batches:  # only the listed tasks appear in validation
            batch["task_ids"] = torch.tensor([tasks[int(t) % len(tasks)] for t in batch["task_ids"]])

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_batches, batch_size=None, shuffle=False)


def test_validation_views_show_the_evaluated_routing_with_task_names(tmp_path):
    """Pinned to expert 2: every layer and every validated task send all tokens there; a task missing from the
    validation examples is a dash in the table and a grey cell, not a 0."""
    telemetry = RoutingTelemetry(every_n_steps=2)
    trainer = tiny_trainer(
        tmp_path,
        [telemetry],
        max_steps=4,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=3,
    )
    trainer.fit(ValidatedLM(router_bias=[0.0, 0.0, 30.0, 0.0]), datamodule=ValidatedData(4, tasks=(0, 2)))
    events = read_events(tmp_path / "tiny" / "version_0")
    tables = texts(events, "router/table")
    val_steps = [1, 3]  # the x values of validation metrics after global steps 2 and 4
    assert sorted(tables) == val_steps
    alpha, beta, gamma = TASK_NAMES
    for step, table in tables.items():
        assert f"Routing on the validation examples, step {step}" in table
        assert f"| layer | all tasks | {alpha} | {beta} | {gamma} |" in table
        assert f"differ in 0 of {len(LAYERS)} layers" in table
        for i in LAYERS:
            assert f"| {i} | expert 2 (1.00) | expert 2 (1.00) | – | expert 2 (1.00) |" in table
            assert f"| {i} | {alpha} | 0.00 | 0.00 | **1.00** | 0.00 |" in table
            assert f"| {i} | {beta} | – | – | – | – |" in table
    for tag, rows in (
        ("router/layer_expert_load", len(LAYERS)),
        ("router/task_expert_usage", len(TASK_NAMES)),
    ):
        images = events.Images(tag)
        assert [image.step for image in images] == val_steps
        assert all(image.width >= 400 and image.height >= 100 + 20 * rows for image in images)
    charts = custom_scalar_charts(events)
    assert [len(series) for series in charts["router: expert load per layer"].values()] == [K] * len(LAYERS)


@pytest.mark.parametrize("num_experts", [None, 0, 1], ids=["no-adapter", "cam", "one-expert"])
def test_models_without_a_real_router_do_not_break_training(tmp_path, caplog, num_experts):
    caplog.set_level(logging.WARNING, logger="hycam_pl.callbacks.routing")
    trainer = tiny_trainer(tmp_path, [RoutingTelemetry(every_n_steps=1, collapse_patience=1)], max_steps=2)
    trainer.fit(TinyLM(num_experts=num_experts), datamodule=TinyData(2))
    scalars = scalar_series(read_events(tmp_path / "tiny" / "version_0"))
    assert "train/loss" in scalars
    router_tags = [tag for tag in scalars if tag.startswith("router/")]
    if num_experts == 1:  # a single expert takes every token by construction: logged, never a "collapse"
        assert scalars["router/layer_0/load/expert_0"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    else:
        assert router_tags == []
    assert not [r for r in caplog.records if "router collapse" in r.getMessage()]


def test_without_a_datamodule_per_task_usage_is_skipped(tmp_path):
    trainer = tiny_trainer(tmp_path, [RoutingTelemetry(every_n_steps=1)], max_steps=2)
    trainer.fit(TinyLM(), train_dataloaders=TinyData(2).train_dataloader())
    events = read_events(tmp_path / "tiny" / "version_0")
    tags = events.Tags()
    assert "router/layer_0/load/expert_0" in tags["scalars"]
    assert not [tag for tag in tags["scalars"] if tag.startswith("router/task/")]
    assert tags["images"] == []


@pytest.mark.parametrize(
    "kwargs",
    [{"every_n_steps": 0}, {"collapse_share": 0.0}, {"collapse_share": 1.5}, {"collapse_patience": 0}],
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RoutingTelemetry(**kwargs)


class BatchPinnedLM(TinyLM):
    """Validation pins every layer's router to one expert per validation batch (``expert = batch index``)."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        bias = torch.full((K,), -30.0)
        bias[batch_idx % K] = 30.0
        for layer in modulated_layers(self.model).values():
            layer.router.linear.bias.copy_(bias)
        self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


class TaskBatches(TinyData):
    """Validation batch ``b`` holds the tasks ``tasks_of_batch[b]``, every example 12 real tokens."""

    def __init__(self, tasks_of_batch: list[list[int]]) -> None:
        super().__init__(2)
        generator = torch.Generator().manual_seed(3)
        self.val_batches = []
        for tasks in tasks_of_batch:
            ids = torch.randint(1, 64, (len(tasks), 12), generator=generator)
            self.val_batches.append(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids), "task_ids": torch.tensor(tasks)}
            )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_batches, batch_size=None, shuffle=False)


@pytest.mark.parametrize(
    ("tasks_of_batch", "expected"),
    [
        ([[0, 1, 2, 0, 1, 2]] * 3, 0.0),  # every batch holds every task equally: the expert ignores the task
        ([[0, 0, 0], [1, 1], [2, 2, 2, 2]], 1.0),  # batch b = task b only: each task has its own expert
    ],
    ids=["task-independent", "own-expert"],
)
def test_validation_reports_routing_specialisation_per_layer(tmp_path, tasks_of_batch, expected):
    trainer = tiny_trainer(tmp_path, [RoutingTelemetry(every_n_steps=2)], max_steps=2, val_check_interval=2)
    trainer.fit(BatchPinnedLM(router_bias=[0.0] * K), datamodule=TaskBatches(tasks_of_batch))
    events = read_events(tmp_path / "tiny" / "version_0")
    scalars = scalar_series(events)
    for i in LAYERS:
        assert scalars[f"val/router/layer_{i}/task_nmi"] == {1: pytest.approx(expected, abs=1e-6)}
    assert scalars["val/router/task_nmi"] == {1: pytest.approx(expected, abs=1e-6)}
    (table,) = texts(events, "router/table").values()
    assert "| layer | all tasks | alpha | beta | gamma | task NMI |" in table
    for i in LAYERS:
        assert f" | {expected:.2f} |" in next(
            line for line in table.splitlines() if line.startswith(f"| {i} |")
        )
    assert f"Routing specialisation (task NMI): {expected:.2f}, mean over layers" in table
