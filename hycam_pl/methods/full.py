"""Plain full fine-tuning: the baseline every adapter is compared against."""

from __future__ import annotations

from typing import Any

from torch import nn

from hycam_pl.methods.base import AdaptationMethod, refuse_method_options, register_method, warn_unused_hycam


class FullFineTuning(AdaptationMethod):
    name = "full"

    def __init__(self, hycam: Any = None, method_options: dict[str, Any] | None = None) -> None:
        refuse_method_options("full", method_options, "full fine-tuning has no options")
        warn_unused_hycam("full", hycam)

    def apply(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)


register_method("full", FullFineTuning)
