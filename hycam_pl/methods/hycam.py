"""CAM and HyCAM as methods: attach the modulation, add the weighted balance loss, split learning rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hycam_pl.methods.base import AdaptationMethod, _groups, refuse_method_options, register_method
from hycam_pl.modulation import (
    HyCAMConfig,
    attach,
    balance_loss,
    count_parameters,
    load_adapter,
    save_adapter,
)
from hycam_pl.modulation.config import ROUTING_DEFAULTS, warn_once
from hycam_pl.modulation.model import component_of


class HyCAMMethod(AdaptationMethod):
    """``method: hycam`` (shared CAM + experts + router) or ``method: cam`` (the shared CAM alone)."""

    exports_adapter = True

    def __init__(
        self,
        hycam: HyCAMConfig | None = None,
        single: bool = False,
        method_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = "cam" if single else "hycam"
        refuse_method_options(self.name, method_options, "set its options under model.hycam")
        if single:
            hycam = _single_cam(hycam) if hycam is not None else HyCAMConfig(num_experts=0)
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
        """A peft folder (``peft_type: HYCAM``): ``PeftModel.from_pretrained`` loads it after ``import
        hycam_pl.peft``, :meth:`load` / ``hycam_pl.load_adapter`` without peft."""
        save_adapter(model, directory)

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        """Attach the saved adapter to a fresh base ``model`` (a folder of either format; another base is refused)."""
        return load_adapter(model, directory)

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return count_parameters(model)


def _single_cam(config: HyCAMConfig) -> HyCAMConfig:
    """``method: cam`` keeps the config's CAM options and drops its experts and routing, with a warning, so that
    ``--model.method cam`` alone turns any HyCAM config into its CAM baseline."""
    if config.num_experts == 0:
        return config
    warn_once(
        f"model.method='cam' is the single shared CAM: model.hycam.num_experts={config.num_experts} and its "
        "expert/routing options are ignored (use method 'hycam' for experts)"
    )
    kept = {k: v for k, v in config.to_dict().items() if k not in ROUTING_DEFAULTS}
    return HyCAMConfig.from_dict({**kept, "num_experts": 0})


register_method("hycam", lambda hycam=None, method_options=None: HyCAMMethod(hycam, False, method_options))
register_method("cam", lambda hycam=None, method_options=None: HyCAMMethod(hycam, True, method_options))
