"""``molora`` and ``hydralora``: the mixture-of-LoRA baselines (hycam_pl.modulation.mixture) as methods."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hycam_pl.methods.base import AdaptationMethod, register_method, warn_unused_hycam
from hycam_pl.methods.peft_methods import summarise
from hycam_pl.modulation.mixture import (
    MixtureConfig,
    attach_mixture,
    component_of,
    load_mixture,
    mixture_balance_loss,
    save_mixture,
)


class MixtureMethod(AdaptationMethod):
    """K LoRA experts (``molora``) or one shared A and K B's (``hydralora``) on ``target_modules``, mixed per token
    by a router per layer, trained with ``balance_coef`` x the balance loss. Options: :class:`MixtureConfig`."""

    exports_adapter = True

    def __init__(self, kind: str, hycam: Any = None, method_options: dict[str, Any] | None = None) -> None:
        self.name = kind
        warn_unused_hycam(kind, hycam)
        options = dict(method_options or {})
        if "kind" in options:
            raise ValueError(f"model.method_options.kind is set by model.method ({kind!r}); remove it")
        try:
            self.config = MixtureConfig.from_dict({**options, "kind": kind})
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.method_options: {error}") from None

    def apply(self, model: nn.Module) -> nn.Module:
        try:
            return attach_mixture(model, self.config)
        except ValueError as error:
            raise ValueError(f"model.method={self.name!r}: {error}") from None

    def auxiliary_losses(self, model: nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
        return {"balance_loss": (self.config.balance_coef, mixture_balance_loss(model))}

    def save(self, model: nn.Module, directory: str) -> None:
        save_mixture(model, directory)

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        return load_mixture(model, directory)

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return summarise(model, component_of)


register_method(
    "molora", lambda hycam=None, method_options=None: MixtureMethod("molora", hycam, method_options)
)
register_method(
    "hydralora", lambda hycam=None, method_options=None: MixtureMethod("hydralora", hycam, method_options)
)
