"""Tiny decoders for the peft tests (the modulation tests' builders), and the map from peft to attach names."""

from __future__ import annotations

import torch

import hycam_pl.peft  # noqa: F401  (registers HyCAM with peft)
from hycam_pl import HyCAMConfig, attach
from hycam_pl.peft import HyCAMPeftConfig
from tests.modulation.conftest import batch, randomize_adapter, tiny_model

__all__ = ["attach_name", "attached_and_peft", "batch", "randomize_adapter", "tiny_model"]


def attach_name(peft_name: str, adapter: str = "default") -> str:
    """``base_model.model.model.layers.0.self_attn.hycam.default.x`` -> ``model.layers.0.self_attn.hycam.x``."""
    return (
        peft_name.removeprefix("base_model.model.")
        .replace(f".hycam.{adapter}.", ".hycam.")
        .replace(".base_layer.", ".")
    )


def attached_and_peft(family: str = "llama", **options):
    """The same tiny base model twice, one with ``hycam_pl.attach``, one through ``get_peft_model``, created from the
    same random state (so their adapters start equal), then given the same random non-zero adapter weights."""
    from peft import get_peft_model

    attached = tiny_model(family)
    torch.manual_seed(5)
    attach(attached, HyCAMConfig(**options))
    base = tiny_model(family)
    torch.manual_seed(5)
    peft_model = get_peft_model(base, HyCAMPeftConfig(**options))
    initial = {attach_name(n): p.detach().clone() for n, p in peft_model.named_parameters() if ".hycam." in n}
    randomize_adapter(attached)
    params = dict(attached.named_parameters())
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".hycam." in name:
                param.copy_(params[attach_name(name)])
    return attached, peft_model, initial
