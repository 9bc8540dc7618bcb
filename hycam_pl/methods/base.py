"""The interface every adaptation method implements."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hycam_pl.modulation.config import warn_once

# A normalisation layer's name as transformers and torch spell them: ``input_layernorm``, ``norm``,
# ``LayerNorm``, ``layer_norm``, ``ln_f``/``ln_1`` (GPT-2), ``q_norm``.
_NORM_LAYER = re.compile(r"norm|^ln(_|$)", re.IGNORECASE)


def is_bias_or_norm(name: str) -> bool:
    """Whether parameter ``name`` is a bias (``bias``, ``bias_A``...) or belongs to a normalisation layer."""
    parts = name.split(".")
    if "bias" in parts[-1].lower():
        return True
    return len(parts) > 1 and _NORM_LAYER.search(parts[-2]) is not None


class AdaptationMethod:
    """Default behaviour: train every parameter, no auxiliary loss, one parameter group."""

    name = "base"
    exports_adapter = False  # whether ``save`` writes a small adapter folder (exported after ``fit``)

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def auxiliary_losses(self, model: nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
        """Extra losses of the last forward: name -> (weight in the total loss, unweighted value)."""
        return {}

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Whether weight decay applies to a trainable parameter: decided by its role, never by its shape
        (stacked expert biases are 2-D). Biases and normalisation weights never decay; methods with other
        parameters that should not decay (e.g. scales) override this."""
        return not is_bias_or_norm(name)

    def parameter_groups(
        self, model: nn.Module, learning_rate: float, weight_decay: float, overrides: dict[str, float]
    ) -> list[dict[str, Any]]:
        """AdamW groups: ``decay`` and ``no_decay`` (see :meth:`decays`)."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (decay if self.decays(name, param) else no_decay).append(param)
        return _groups(
            [("decay", decay, learning_rate, weight_decay), ("no_decay", no_decay, learning_rate, 0.0)]
        )

    def save(self, model: nn.Module, directory: str) -> None:
        """Write what is needed to reuse the trained method without the Lightning checkpoint."""
        model.save_pretrained(directory)

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        """Apply the method to a fresh base ``model`` with the weights ``save`` wrote; return the model to use."""
        raise NotImplementedError(f"method {self.name!r} has no adapter to load")

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        return {"total": {"trainable": trainable, "frozen": frozen}}


def _groups(specs: list[tuple[str, list, float, float]]) -> list[dict[str, Any]]:
    return [
        {"name": name, "params": params, "lr": lr, "weight_decay": wd}
        for name, params, lr, wd in specs
        if params
    ]


METHODS: dict[str, Callable[..., AdaptationMethod]] = {}


def register_method(name: str, factory: Callable[..., AdaptationMethod]) -> None:
    METHODS[name] = factory


def build_method(name: str, **options: Any) -> AdaptationMethod:
    """``METHODS[name](hycam=..., method_options=...)``: every factory takes the HyCAM config (``model.hycam``)
    and the method's own options (``model.method_options``, a dict or None)."""
    if name not in METHODS:
        raise ValueError(f"model.method={name!r} is unknown; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


def refuse_method_options(name: str, method_options: dict[str, Any] | None, where: str) -> None:
    """Methods configured elsewhere (``hycam``/``cam`` by ``model.hycam``) take no ``model.method_options``."""
    if method_options:
        raise ValueError(
            f"model.method_options {sorted(method_options)} are not used by model.method={name!r}; {where}"
        )


def warn_unused_hycam(name: str, hycam: Any) -> None:
    """``model.hycam`` set for a method that does not use it: said once, then ignored, so one config can switch
    methods with ``--model.method`` alone."""
    if hycam is not None:
        warn_once(
            f"model.hycam is set but model.method={name!r} does not use it; it is ignored", stacklevel=4
        )
