"""The non-finite-step guard: an optimizer step whose loss or gradients are not finite is skipped (and counted)
instead of corrupting the weights, and a run stops with one line after too many such steps in a row.

Why a class of its own: it is the Lightning module's ``optimizer_step``, but its state (the counts, saved in
checkpoints) and its rules (fp16 loss scaling skips some steps on purpose) are independent of the model.
"""

from __future__ import annotations

from typing import Any

import torch


class NonFiniteGuard:
    """``max_nonfinite_steps``: stop after this many consecutive non-finite steps; ``max_scaler_skips``: the
    same for steps the fp16 GradScaler skipped (larger: it skips some while it searches for a scale)."""

    def __init__(self, max_nonfinite_steps: int, max_scaler_skips: int) -> None:
        for option, value in (
            ("max_nonfinite_steps", max_nonfinite_steps),
            ("max_scaler_skips", max_scaler_skips),
        ):
            if value < 1:
                raise ValueError(f"model.{option}={value} must be >= 1")
        self.limits = {"max_nonfinite_steps": max_nonfinite_steps, "max_scaler_skips": max_scaler_skips}
        self.total = 0  # non-finite steps of the whole run (logged as train/nonfinite_steps, checkpointed)
        self.in_a_row = 0

    def optimizer_step(self, trainer: Any, optimizer: Any, optimizer_closure: Any, global_step: int) -> None:
        """``optimizer.step`` with the check: under fp16 loss scaling the scaler skips (and is counted), else
        non-finite gradients are zeroed so that the step changes nothing."""
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None:
            scale = scaler.get_scale()
            optimizer.step(closure=optimizer_closure)
            if scaler.get_scale() < scale:  # lowered exactly when it found inf/NaN gradients and skipped
                self.record(
                    "gradient (skipped by the fp16 GradScaler)", "max_scaler_skips", trainer, global_step
                )
            else:
                self.in_a_row = 0
            return

        def closure_with_check():
            loss = optimizer_closure() if optimizer_closure is not None else None
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            # One host synchronisation for all tensors, not one per parameter.
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
            if finite:
                self.in_a_row = 0
                return loss
            optimizer.zero_grad(set_to_none=True)
            finite_loss = loss is not None and bool(torch.isfinite(torch.as_tensor(loss)).all())
            self.record("gradient" if finite_loss else "loss", "max_nonfinite_steps", trainer, global_step)
            return loss

        optimizer.step(closure=closure_with_check)

    def record(self, what: str, option: str, trainer: Any, global_step: int) -> None:
        self.total += 1
        self.in_a_row += 1
        limit = self.limits[option]
        if self.in_a_row >= limit:
            last_good = last_checkpoint(trainer)
            raise FloatingPointError(
                f"non-finite {what} at global step {global_step} ({self.in_a_row} steps in a row, limit "
                f"model.{option}={limit}); last good checkpoint: {last_good or 'none saved yet'}"
            )


def last_checkpoint(trainer: Any) -> str | None:
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is None:
        return None
    return getattr(callback, "last_model_path", None) or getattr(callback, "best_model_path", None) or None
