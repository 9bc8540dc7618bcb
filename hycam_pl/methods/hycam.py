"""CAM and HyCAM as methods: attach the modulation, add the weighted balance loss, split learning rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hycam_pl.methods.base import AdaptationMethod, _groups, register_method
from hycam_pl.modulation import HyCAMConfig, attach, balance_loss, count_parameters, save_adapter
from hycam_pl.modulation.model import component_of


class HyCAMMethod(AdaptationMethod):
    """``method: hycam`` (shared CAM + experts + router) or ``method: cam`` (the shared CAM alone)."""

    def __init__(self, hycam: HyCAMConfig | None = None, single: bool = False) -> None:
        self.name = "cam" if single else "hycam"
        if single:
            if hycam is not None and hycam.num_experts != 0:
                raise ValueError(
                    f"model.method='cam' is the single shared CAM, but model.hycam.num_experts={hycam.num_experts}; "
                    "use method 'hycam' for experts or set num_experts: 0"
                )
            hycam = hycam or HyCAMConfig(num_experts=0)
        self.config = hycam or HyCAMConfig()

    def apply(self, model: nn.Module) -> nn.Module:
        return attach(model, self.config)

    def auxiliary_losses(self, model: nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
        if not self.config.num_experts:
            return {}
        return {"balance_loss": (self.config.balance_coef, balance_loss(model))}

    def parameter_groups(
        self, model: nn.Module, learning_rate: float, weight_decay: float, overrides: dict[str, float]
    ) -> list[dict[str, Any]]:
        """Separate learning rates for the shared CAM and for the experts + router; biases (the stacked
        ``(K, r)``/``(K, d)`` expert biases too) and norms never decay (see :meth:`decays`)."""
        shared_lr = overrides.get("shared", learning_rate)
        expert_lr = overrides.get("experts", learning_rate)
        buckets: dict[tuple[str, bool], list] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            component = component_of(name)
            family = "shared" if component in ("shared", "backbone") else "experts"
            buckets.setdefault((family, self.decays(name, param)), []).append(param)
        specs = []
        for family, lr in (("shared", shared_lr), ("experts", expert_lr)):
            specs.append((f"{family}", buckets.get((family, True), []), lr, weight_decay))
            specs.append((f"{family}_no_decay", buckets.get((family, False), []), lr, 0.0))
        return _groups(specs)

    def save(self, model: nn.Module, directory: str) -> None:
        save_adapter(model, directory)

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return count_parameters(model)


register_method("hycam", lambda hycam=None: HyCAMMethod(hycam))
register_method("cam", lambda hycam=None: HyCAMMethod(hycam, single=True))
