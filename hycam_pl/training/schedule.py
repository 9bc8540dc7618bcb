"""The learning-rate schedule: linear warm-up, then half a cosine to 0."""

from __future__ import annotations

import math
from functools import partial

import torch


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``transformers.get_cosine_schedule_with_warmup`` (half a cosine), the same function of the step, without
    importing ``transformers.optimization``, which imports peft and accelerate (~25 MB) into every run."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_cosine_factor, warmup=warmup, total=total))


def _cosine_factor(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
