"""Non-finite losses and gradients: the step is skipped (weights and optimizer state untouched) and counted;
isolated faults do not stop training; ``max_nonfinite_steps`` in a row stop it with the step and the last
checkpoint in the message."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hycam_pl.methods import HyCAMMethod
from hycam_pl.training import MultiTaskLM
from tests.reliability.helpers import TINY_BACKBONE, tiny_data, tiny_trainer

pytestmark = pytest.mark.filterwarnings("ignore:`training_step` returned `None`")


class FaultyLM(MultiTaskLM):
    """Poisons chosen global steps: a NaN task loss, or an inf in one gradient after a finite backward."""

    nan_loss_steps: frozenset[int] = frozenset()
    inf_grad_steps: frozenset[int] = frozenset()

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        task_loss, nll_sum, tokens = super()._losses(batch)
        if self.training and self.global_step in self.nan_loss_steps:
            task_loss = task_loss * math.nan
        return task_loss, nll_sum, tokens

    def on_after_backward(self) -> None:
        if self.global_step in self.inf_grad_steps:
            grad = next(p.grad for p in self.parameters() if p.grad is not None)
            grad.view(-1)[0] = math.inf


class StepRecorder(L.Callback):
    """Per global step: did any trainable weight change, and did AdamW's step count move?"""

    def __init__(self) -> None:
        self.weights_changed: dict[int, bool] = {}
        self.adam_stepped: dict[int, bool] = {}

    @staticmethod
    def _adam_steps(trainer: L.Trainer) -> list[float]:
        optimizer = trainer.optimizers[0]
        return [float(state["step"]) for state in optimizer.state.values() if "step" in state]

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self._step = trainer.global_step
        self._weights = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        self._adam = self._adam_steps(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        params = dict(module.named_parameters())
        self.weights_changed[self._step] = any(
            not torch.equal(w, params[n]) for n, w in self._weights.items()
        )
        self.adam_stepped[self._step] = self._adam_steps(trainer) != self._adam


def _faulty(nan_loss: set[int] = frozenset(), inf_grad: set[int] = frozenset(), limit: int = 3) -> FaultyLM:
    L.seed_everything(0)
    model = FaultyLM(
        TINY_BACKBONE,
        method=HyCAMMethod(num_experts=2, rank=4),
        learning_rate=1e-2,
        warmup_ratio=0.0,
        max_nonfinite_steps=limit,
    )
    model.nan_loss_steps, model.inf_grad_steps = frozenset(nan_loss), frozenset(inf_grad)
    return model


@pytest.fixture(scope="module")
def isolated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FaultyLM, L.Trainer, StepRecorder]:
    """Steps 1 and 4 have a NaN loss, step 2 an inf gradient: three isolated faults in seven steps."""
    model, recorder = _faulty(nan_loss={1, 4}, inf_grad={2}), StepRecorder()
    trainer = tiny_trainer(tmp_path_factory.mktemp("isolated"), max_steps=7, callbacks=[recorder])
    trainer.fit(model, tiny_data())
    return model, trainer, recorder


def test_isolated_faults_are_skipped_counted_and_training_continues(isolated_run) -> None:
    model, trainer, recorder = isolated_run
    assert trainer.global_step == 7
    skipped, trained = {1, 2, 4}, {0, 3, 5, 6}
    assert {s for s, changed in recorder.weights_changed.items() if not changed} == skipped
    assert all(recorder.weights_changed[s] for s in trained)
    assert {s for s, stepped in recorder.adam_stepped.items() if not stepped} == skipped
    assert model.nonfinite_steps == 3 and model.nonfinite_in_a_row == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_logged_fault_counter_is_current(isolated_run) -> None:
    _, trainer, _ = isolated_run
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 3.0


STREAKS = {
    # kind -> (nan-loss steps, inf-gradient steps, the message's "non-finite <what>")
    "gradient": (set(), set(range(3, 100)), "gradient"),
    "loss": (set(range(3, 100)), set(), "loss"),
    "mixed": ({3, 5}, {4}, "loss"),
}


@pytest.mark.parametrize(
    "kind",
    [
        "gradient",
        "loss",
        "mixed",
    ],
)
def test_a_streak_of_faults_stops_with_step_and_last_checkpoint(tmp_path: Path, kind: str) -> None:
    nan_loss, inf_grad, what = STREAKS[kind]
    model, recorder = _faulty(nan_loss, inf_grad, limit=3), StepRecorder()
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=0
    )
    trainer = tiny_trainer(tmp_path, max_steps=8, callbacks=[checkpoints, recorder])
    good: dict[str, torch.Tensor] = {}

    class KeepGood(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
            if trainer.global_step == 3:  # the weights every skipped step must leave unchanged
                good.update({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})

    trainer.callbacks.append(KeepGood())
    with pytest.raises(FloatingPointError) as raised:
        trainer.fit(model, tiny_data())

    message = str(raised.value)
    assert f"non-finite {what} at global step 5" in message, message
    assert "3 steps in a row" in message and "max_nonfinite_steps=3" in message, message
    path = re.search(r"last good checkpoint: (\S+)", message)
    assert path and Path(path.group(1)).is_file() and Path(path.group(1)).parent == tmp_path / "ckpt", message
    assert torch.load(path.group(1), weights_only=False)["global_step"] == 4
    assert model.nonfinite_steps == 3
    assert not any(recorder.weights_changed[s] for s in (3, 4)), "a skipped step changed the weights"
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], w) for n, w in good.items())
