"""Plain full fine-tuning: the baseline every adapter is compared against."""

from __future__ import annotations

from typing import Any

from torch import nn

from hycam_pl.methods.base import AdaptationMethod, register_method


class FullFineTuning(AdaptationMethod):
    name = "full"

    def __init__(self, hycam: Any = None) -> None:
        if hycam is not None:
            raise ValueError("model.hycam is set but model.method='full' does not use it; remove model.hycam")

    def apply(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)


register_method("full", FullFineTuning)
