"""CAM and HyCAM as a method: attach the modulation, add the weighted balance loss, split learning rates.

``model.method: hycam`` is HyCAM with :class:`HyCAMConfig`'s defaults and ``model.method: cam`` the shared CAM
alone (``num_experts: 0``); any other setting is the typed form::

    method:
      class_path: hycam_pl.methods.HyCAMMethod
      init_args: {num_experts: 4, rank: 8, expert_lr: 1.0e-3}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hycam_pl.methods.base import AdaptationMethod, parameter_groups, register_method
from hycam_pl.modulation import HyCAMConfig, attach, balance_loss, count_parameters, save_adapter
from hycam_pl.modulation.model import component_of, resolve_layer_indices
from hycam_pl.modulation.persistence import (
    CONFIG_FILE,
    PEFT_TYPE,
    identity_mismatches,
    load_adapter,
    read_adapter_config,
)

# HyCAMConfig fields that fix the trained tensors or their meaning; the others (tau, hard, eval_routing and the
# balance options) and the learning rates are training/evaluation settings and may change on resume.
STRUCTURE = ("num_experts", "rank", "alpha", "bias", "shared", "apply_to", "layers", "train_norms", "dtype")


class HyCAMMethod(AdaptationMethod):
    """HyCAM (shared CAM + ``num_experts`` routed low-rank CAMs + router; ``num_experts: 0`` is plain CAM).

    Every :class:`HyCAMConfig` field is an option of the same name (METHOD.md §2-3); routing options have no
    meaning at ``num_experts: 0`` and are then ignored with one warning, so an expert sweep's K = 0 point is
    one value. ``shared_lr`` and ``expert_lr`` override ``model.learning_rate`` for the shared CAM (and any
    trained backbone norms) and for the specialised CAMs + router.
    """

    exports_adapter = True
    adapter_index_file = CONFIG_FILE
    checkpoint_types = (HyCAMConfig,)

    def __init__(
        self,
        num_experts: int = 2,
        rank: int | None = None,
        alpha: float | None = None,
        bias: bool = True,
        shared: bool = True,
        tau: float | None = None,
        hard: bool | None = None,
        eval_routing: str | None = None,
        balance_coef: float | None = None,
        balance_scale_by_experts: bool | None = None,
        balance_scope: str | None = None,
        apply_to: str = "attention_output",
        layers: list[int] | None = None,
        train_norms: bool = False,
        dtype: str = "float32",
        shared_lr: float | None = None,
        expert_lr: float | None = None,
    ) -> None:
        arguments = locals()
        options = {f.name: arguments[f.name] for f in fields(HyCAMConfig)}
        try:
            self.config = HyCAMConfig.from_dict(options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.method: {error}") from None
        for option, value in (("shared_lr", shared_lr), ("expert_lr", expert_lr)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(
                    f"model.method: HyCAMMethod.{option}={value!r} is invalid; allowed: a number > 0"
                )
        self.shared_lr = shared_lr
        self.expert_lr = expert_lr
        self.name = "hycam" if self.config.num_experts else "cam"

    def apply(self, model: nn.Module) -> nn.Module:
        return attach(model, self.config)

    def auxiliary_losses(self, model: nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
        if not self.config.num_experts:
            return {}
        return {"balance_loss": (self.config.balance_coef, balance_loss(model))}

    def parameter_groups(
        self, model: nn.Module, learning_rate: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """Separate learning rates for the shared CAM and for the experts + router; biases (the stacked
        ``(K, r)``/``(K, d)`` expert biases too) and norms never decay (see :meth:`decays`)."""
        shared_lr = learning_rate if self.shared_lr is None else self.shared_lr
        expert_lr = learning_rate if self.expert_lr is None else self.expert_lr
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
        return parameter_groups(specs)

    def save(self, model: nn.Module, directory: str) -> None:
        """A peft folder (``peft_type: HYCAM``): ``PeftModel.from_pretrained`` loads it after ``import
        hycam_pl.peft``, :meth:`load` / ``hycam_pl.load_adapter`` without peft."""
        save_adapter(model, directory)

    @classmethod
    def adapter_kind(cls, directory: Path) -> str | None:
        config = _json(Path(directory) / CONFIG_FILE)
        if not isinstance(config, dict):
            return None
        return "hycam" if config.get("peft_type") == PEFT_TYPE or "hycam_config" in config else None

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        """Attach the saved adapter to a fresh base ``model`` (a folder of either format; another base or
        another HyCAM configuration is refused)."""
        self.check_adapter(directory, None)
        try:
            return load_adapter(model, directory)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"model.adapter: {error}") from None

    def structure(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in STRUCTURE}

    def check_backbone(self, backbone: Mapping[str, Any]) -> None:
        hidden, num_layers = backbone.get("hidden_size"), backbone.get("num_hidden_layers")
        if hidden is not None and self.config.num_experts and self.config.rank > hidden:
            raise ValueError(
                f"model.method.rank={self.config.rank} exceeds the hidden_size={hidden} of model.backbone; "
                f"use a rank <= {hidden}"
            )
        if num_layers is not None:
            try:
                resolve_layer_indices(self.config, num_layers)
            except ValueError as error:
                raise ValueError(f"model.method.layers: {error}") from None

    def check_adapter(self, directory: str | os.PathLike, backbone: Mapping[str, Any] | None) -> None:
        """``model.adapter`` must be a saved HyCAM adapter of this base model with this configuration."""
        try:
            meta = read_adapter_config(directory)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"model.adapter: {error}") from None
        if backbone is not None:
            saved = meta["base_model"]
            mismatched = identity_mismatches(saved, dict(backbone), "model.backbone")
            if mismatched:
                raise ValueError(
                    f"model.adapter={str(directory)!r} was trained on a different base model "
                    f"({saved.get('name_or_path') or 'unnamed'}): " + "; ".join(mismatched)
                )
        differences = [
            f"{f.name}: adapter {getattr(meta['config'], f.name)!r} vs model.method {getattr(self.config, f.name)!r}"
            for f in fields(HyCAMConfig)
            if getattr(meta["config"], f.name) != getattr(self.config, f.name)
        ]
        if differences:
            raise ValueError(
                f"model.adapter={str(directory)!r} was saved with a different HyCAM configuration than "
                f"model.method ({'; '.join(differences)}); set model.method's options to the adapter's values"
            )

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return count_parameters(model)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


register_method("hycam", HyCAMMethod)
register_method("cam", lambda: HyCAMMethod(num_experts=0))
