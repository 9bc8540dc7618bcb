"""fp16 loss scaling (``precision: 16-mixed``): steps the GradScaler skips (inf/NaN gradients) are counted, a
few in a row (the scaler searching for a scale) do not stop training, and a long streak stops it with the
same ``FloatingPointError`` (exit 3 from the CLI) as non-finite steps in full precision."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from hycam_pl.methods import HyCAMMethod
from hycam_pl.training import MultiTaskLM
from tests.reliability.helpers import TINY_BACKBONE, tiny_data, tiny_trainer

pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")


class Overflowing(MultiTaskLM):
    """An inf in one gradient at the chosen global steps, as an fp16 overflow leaves it."""

    inf_steps: frozenset[int] = frozenset()

    def on_after_backward(self) -> None:
        if self.global_step in self.inf_steps:
            grad = next(p.grad for p in self.parameters() if p.grad is not None)
            grad.view(-1)[0] = math.inf


def _fit(tmp_path, inf_steps: set[int], max_steps: int, limit: int) -> tuple[Overflowing, L.Trainer]:
    L.seed_everything(0)
    model = Overflowing(
        TINY_BACKBONE, method=HyCAMMethod(num_experts=2, rank=4), warmup_ratio=0.0, max_scaler_skips=limit
    )
    model.inf_steps = frozenset(inf_steps)
    # Lightning turns ``precision="16-mixed"`` on CPU into bf16; the plugin keeps real fp16 + GradScaler.
    trainer = tiny_trainer(tmp_path, max_steps, plugins=[MixedPrecision("16-mixed", device="cpu")])
    assert trainer.precision_plugin.scaler is not None
    return model, trainer


def test_a_long_streak_of_scaler_skipped_steps_stops_training(tmp_path):
    model, trainer = _fit(tmp_path, set(range(100)), max_steps=20, limit=4)
    with pytest.raises(FloatingPointError) as raised:
        trainer.fit(model, datamodule=tiny_data())
    message = str(raised.value)
    assert "4 steps in a row" in message and "model.max_scaler_skips=4" in message, message
    assert "global step 3" in message and "fp16 GradScaler" in message, message
    assert model.nonfinite_steps == 4


def test_scaler_skips_below_the_limit_are_counted_but_do_not_stop_training(tmp_path):
    model, trainer = _fit(tmp_path, {0, 1, 3, 4}, max_steps=6, limit=3)
    scale = trainer.precision_plugin.scaler.get_scale()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.fit(model, datamodule=tiny_data())
    assert model.global_step == 6 and model.nonfinite_steps == 4 and model.nonfinite_in_a_row == 0
    assert trainer.precision_plugin.scaler.get_scale() == scale / 2**4  # each skip halves the scale
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
