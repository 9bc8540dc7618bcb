"""A torchmetrics ``Metric`` whose state dtypes cannot be changed by the model around it (private).

Why: torchmetrics guards its states against ``.half()``/``.bfloat16()`` but not against
``module.to(dtype=...)``, which is exactly how Lightning's ``"bf16-true"``/``"16-true"`` precision
converts the LightningModule (children included); model construction under
``trainer.init_module()`` also makes bf16 the default dtype. Counts and sums kept in bf16 are
wrong after a few hundred tokens (integers above 256 are not representable). So every floating
state is created as float64 and cast back to its creation dtype after any ``_apply`` (``.to``,
``.cuda``, ...), while device moves still happen normally.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class PinnedDtypeMetric(Metric):
    """Mixin base: floating states are float64, and every state keeps its dtype whatever the module does."""

    def add_state(self, name: str, default: Any, *args: Any, **kwargs: Any) -> None:
        """Register a state as torchmetrics does, with floating defaults promoted to float64 and pinned."""
        if isinstance(default, Tensor) and default.is_floating_point():
            default = default.to(torch.float64)
        super().add_state(name, default, *args, **kwargs)
        if isinstance(default, Tensor):
            pinned = self.__dict__.setdefault("_pinned_state_dtypes", {})
            pinned[name] = default.dtype

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> torch.nn.Module:
        this = super()._apply(fn, exclude_state)
        for name, dtype in this.__dict__.get("_pinned_state_dtypes", {}).items():
            this._defaults[name] = this._defaults[name].to(dtype)
            setattr(this, name, getattr(this, name).to(dtype))
        return this
