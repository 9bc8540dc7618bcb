"""Small input checks and constants shared by the metric modules (private)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_string_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    """Fail loudly on the mistakes that otherwise score silently.

    A bare string is a sequence of characters, so it would be scored as one-character
    predictions or references: a plausible wrong number rather than an error.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    for item in (*predictions, *references):
        if not isinstance(item, str):
            raise TypeError(f"expected str items, got {type(item).__name__}")


def nan_like(state: Tensor) -> Tensor:
    """A float64 NaN on the state's device: the value of a mean over zero examples."""
    return torch.tensor(float("nan"), dtype=torch.float64, device=state.device)
