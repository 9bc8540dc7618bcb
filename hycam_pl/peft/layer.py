"""The peft tuner layer: wraps one decoder layer's self-attention and gates its output with M(x).

The arithmetic is :class:`hycam_pl.modulation.layer.ContextualModulation`'s, the module ``hycam_pl.attach`` adds:
one per adapter, in ``self.hycam[adapter_name]``, called through the same :meth:`modulate_output` that attach's
hooks call. So a peft model and an attached model with the same weights compute the same function, routing records
and balance-loss gradient included.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from hycam_pl.modulation.layer import ContextualModulation
from hycam_pl.modulation.model import ADAPTER_NAME

MERGE_REFUSAL = (
    "HyCAM cannot be merged into the base model's weights: its gate M(x) = 1 + S(x) + sum_k g_k(x) E_k(x) is "
    "computed from each token's attention input (and the router picks experts per token), so no fixed change of "
    "weights reproduces it. Keep the PeftModel (or hycam_pl.attach) for inference, or call unload() to get the "
    "unmodified base model back."
)


class HyCAMLayer(nn.Module, BaseTunerLayer):
    """``base_layer`` is the attention block; ``hycam`` holds one :class:`ContextualModulation` per adapter."""

    adapter_layer_names = (ADAPTER_NAME,)

    def __init__(self, base_layer: nn.Module, adapter_name: str, module: ContextualModulation) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.hycam = nn.ModuleDict()
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self._residual: torch.Tensor | None = (
            None  # h, captured by the tuner's hook (apply_to="residual_sum")
        )
        self.update_layer(adapter_name, module)

    def update_layer(self, adapter_name: str, module: ContextualModulation) -> None:
        self.hycam[adapter_name] = module
        self.set_adapter(self.active_adapters)

    def capture_residual(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the layer's input norm: its input is the residual stream ``h``."""
        self._residual = args[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.base_layer(*args, **kwargs)
        residual, self._residual = self._residual, None
        if self.disable_adapters or not self.active_adapters:
            return output
        if len(self.active_adapters) > 1:
            raise ValueError(
                f"HyCAM runs one adapter at a time, but {self.active_adapters} are active; choose one with "
                "model.set_adapter(name)"
            )
        module = self.hycam[self.active_adapters[0]] if self.active_adapters[0] in self.hycam else None
        if module is None:  # this layer is not among the active adapter's ``layers``
            return output
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return module.modulate_output(x, output, residual)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(MERGE_REFUSAL)

    def unmerge(self) -> None:
        pass  # nothing is ever merged

    def __repr__(self) -> str:
        return "hycam." + super().__repr__()
