"""A callback that kills its own process like an out-of-memory killer or a preempted node would (SIGKILL).

Used from configs in subprocess tests, so it must be importable as ``tests.training.interrupt``.
"""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAfterValidation(L.Callback):
    """SIGKILL at the end of the validation that runs at global step ``step`` (after that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
