"""What a run shows while it trains: plain progress lines for logs, and a progress bar with a sensible epoch.

Why: when output goes to a file or a pipe (CI, ``nohup``, SLURM) the progress bar draws nothing, so nothing
appeared between the model summary and the end of training. And Lightning's rich bar prints ``Epoch 1/-2``
when a run is limited by ``max_steps`` (``max_epochs`` is then -1).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLog(L.Callback):
    """Every ``every_n_steps`` optimizer steps, one line on stdout (rank 0)::

        step 20/80 | loss 1.2345 | 0.31 steps/s | 1,480 tok/s | 1:04 elapsed | eta 3:13

    ``loss`` is the mean training loss of the steps since the previous line, ``tok/s`` counts real (unpadded)
    tokens of this rank. ``when="not_tty"`` (default) prints only when stdout is not a terminal, where the
    progress bar already shows the same; ``"always"`` prints in both cases.
    """

    def __init__(self, every_n_steps: int = 10, when: Literal["not_tty", "always"] = "not_tty") -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"ProgressLog.every_n_steps={every_n_steps!r} must be an integer >= 1")
        if when not in ("not_tty", "always"):
            raise ValueError(f"ProgressLog.when={when!r} must be 'not_tty' or 'always'")
        self.every_n_steps = every_n_steps
        self.when = when
        self._reset_window()
        self._start: float | None = None
        self._start_step = 0

    def _reset_window(self) -> None:
        self._loss_sum = 0.0
        self._batches = 0
        self._tokens = 0
        self._window_start = time.perf_counter()
        self._window_step: int | None = None

    def enabled(self) -> bool:
        return self.when == "always" or not sys.stdout.isatty()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._start_step = trainer.global_step
        self._reset_window()
        self._window_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += (
                float(loss.detach()) * trainer.accumulate_grad_batches
            )  # undo Lightning's scaling
            self._batches += 1
        if isinstance(batch, dict) and isinstance(batch.get("attention_mask"), torch.Tensor):
            self._tokens += int(batch["attention_mask"].sum())
        step = trainer.global_step
        if step == self._window_step or step % self.every_n_steps:
            return
        if trainer.is_global_zero and self.enabled():
            print(self.format_line(trainer, step), flush=True)
        self._reset_window()
        self._window_step = step

    def format_line(self, trainer: L.Trainer, step: int) -> str:
        now = time.perf_counter()
        window = max(now - self._window_start, 1e-9)
        steps = step - (self._window_step if self._window_step is not None else step - 1)
        parts = [
            f"step {step}" + (f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else "")
        ]
        if self._batches:
            parts.append(f"loss {self._loss_sum / self._batches:.4f}")
        parts.append(f"{steps / window:.2f} steps/s")
        parts.append(f"{self._tokens / window:,.0f} tok/s")
        if self._start is not None:
            elapsed = now - self._start
            parts.append(f"{format_duration(elapsed)} elapsed")
            done = step - self._start_step
            if trainer.max_steps and trainer.max_steps > 0 and done > 0:
                parts.append(f"eta {format_duration(elapsed / done * (trainer.max_steps - step))}")
        return " | ".join(parts)


class ProgressBar(RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar):  # Lightning's own default choice
    """Lightning's default progress bar, saying ``Epoch 0`` (not ``Epoch 0/-2``) for a run bounded by
    ``max_steps``. Without ``rich`` it is the tqdm bar, which shows no epoch total anyway."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return description.ljust(len(self.validation_description))  # as the parent: no flicker
