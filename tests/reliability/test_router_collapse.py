"""Router collapse (one expert taking more than ``collapse_share`` of a layer's tokens for ``collapse_patience``
logs) is reported as a warning naming the layer and the expert; a healthy router is not."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from hycam_pl.callbacks import RoutingTelemetry
from hycam_pl.methods import HyCAMMethod
from hycam_pl.modulation import modulated_layers
from hycam_pl.training import MultiTaskLM
from tests.reliability.helpers import TINY_BACKBONE, tiny_data, tiny_trainer


def _train(root: Path, collapse_to: int | None) -> None:
    L.seed_everything(0)
    # learning_rate 0: the routing stays exactly as set here for every step
    model = MultiTaskLM(
        TINY_BACKBONE, method=HyCAMMethod(num_experts=2, rank=4), learning_rate=0.0, warmup_ratio=0.0
    )
    if collapse_to is not None:
        with torch.no_grad():
            for layer in modulated_layers(model.model).values():
                layer.router.linear.bias[collapse_to] = 100.0  # beats any Gumbel noise: every token
    telemetry = RoutingTelemetry(
        every_n_steps=1, collapse_share=0.9, collapse_patience=2, histograms=False, images=False
    )
    tiny_trainer(root, max_steps=3, callbacks=[telemetry]).fit(model, tiny_data())


def _collapse_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "router collapse" in r.getMessage()
    ]


def test_collapsed_router_is_warned_about_per_layer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hycam_pl"):
        _train(tmp_path, collapse_to=1)
    warnings = _collapse_warnings(caplog)
    assert len(warnings) == 2, warnings  # once per layer, when the patience is reached (not every log after)
    for layer, message in zip((0, 1), sorted(warnings)):
        assert f"layer {layer} sent 100% of tokens to expert 1 for 2 consecutive logs" in message, message
        assert "balance_coef" in message  # says what to do


def test_balanced_router_is_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hycam_pl"):
        _train(tmp_path, collapse_to=None)
    assert _collapse_warnings(caplog) == []
