"""``molora`` and ``hydralora``: the mixture-of-LoRA baselines (hycam_pl.methods.lora_mixture) as methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hycam_pl.methods.base import AdaptationMethod, register_method
from hycam_pl.methods.lora_mixture import (
    ATTENTION_PROJECTIONS,
    MixtureConfig,
    attach_mixture,
    component_of,
    load_mixture,
    mixture_balance_loss,
    save_mixture,
)
from hycam_pl.modulation.balance import DEFAULT_BALANCE_SCOPE
from hycam_pl.modulation.model import count_parameters_by

# Options that only change training (routing noise, balance pressure) or evaluation: free to change on resume.
SETTINGS = ("dropout", "tau", "eval_routing", "balance_coef", "balance_scale_by_experts", "balance_scope")


class MixtureMethod(AdaptationMethod):
    """K LoRA experts (:class:`MoLoRAMethod`) or one shared A and K B's (:class:`HydraLoRAMethod`) on
    ``target_modules``, mixed per token by a router per layer, trained with ``balance_coef`` x the balance loss.
    The options are :class:`MixtureConfig`'s fields."""

    exports_adapter = True
    adapter_index_file = "adapter_config.json"
    checkpoint_types = (MixtureConfig,)
    kind = "molora"

    def __init__(
        self,
        num_experts: int = 4,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] = list(ATTENTION_PROJECTIONS),  # noqa: B006 (never mutated)
        routing: str = "gumbel_top1",
        top_k: int = 2,
        tau: float = 0.5,
        eval_routing: str = "argmax",
        router_bias: bool = False,
        balance_coef: float = 0.01,
        balance_scale_by_experts: bool = False,
        balance_scope: str = DEFAULT_BALANCE_SCOPE,
        layers: list[int] | None = None,
        dtype: str = "float32",
    ) -> None:
        self.name = self.kind
        try:
            self.config = MixtureConfig.from_dict({**self.init_args_of(locals()), "kind": self.kind})
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.method ({self.kind}): {error}") from None

    @staticmethod
    def init_args_of(arguments: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in arguments.items() if k not in ("self", "__class__")}

    def apply(self, model: nn.Module) -> nn.Module:
        try:
            return attach_mixture(model, self.config)
        except ValueError as error:
            raise ValueError(f"model.method={self.name!r}: {error}") from None

    def auxiliary_losses(self, model: nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
        return {"balance_loss": (self.config.balance_coef, mixture_balance_loss(model))}

    def save(self, model: nn.Module, directory: str) -> None:
        save_mixture(model, directory)

    @classmethod
    def adapter_kind(cls, directory: Path) -> str | None:
        path = Path(directory) / cls.adapter_index_file
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return None
        mixture = config.get("mixture_config") if isinstance(config, dict) else None
        return str(mixture.get("kind", "mixture")) if isinstance(mixture, dict) else None

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        return load_mixture(model, directory)

    def structure(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.to_dict().items() if k not in SETTINGS}

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return count_parameters_by(model, component_of)


class MoLoRAMethod(MixtureMethod):
    """MoLoRA: ``num_experts`` full LoRA experts per target module, mixed per token."""

    kind = "molora"


class HydraLoRAMethod(MixtureMethod):
    """HydraLoRA: one shared A and ``num_experts`` B matrices per target module, mixed per token."""

    kind = "hydralora"


register_method("molora", MoLoRAMethod)
register_method("hydralora", HydraLoRAMethod)
