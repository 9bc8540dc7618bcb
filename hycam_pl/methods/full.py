"""Plain full fine-tuning: the baseline every adapter is compared against."""

from __future__ import annotations

from torch import nn

from hycam_pl.methods.base import AdaptationMethod, register_method


class FullFineTuning(AdaptationMethod):
    """Every backbone weight trains; no options, no adapter (the checkpoint is the result)."""

    name = "full"

    def __init__(self) -> None:
        pass

    def apply(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)


register_method("full", FullFineTuning)
