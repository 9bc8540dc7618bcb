"""Attach HyCAM to a stock Hugging Face decoder, detach it, and read what it did (balance loss, routing, sizes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hycam_pl.modulation.architectures import (
    check_layer,
    find_decoder,
    model_type_of,
    resolve_architecture,
)
from hycam_pl.modulation.balance import differentiable_balance_loss
from hycam_pl.modulation.config import HyCAMConfig
from hycam_pl.modulation.layer import ContextualModulation
from hycam_pl.modulation.routing import (
    STATE_ATTR,
    ModulationState,
    find_state,
    install_forward_record,
    is_attached,
)

ADAPTER_NAME = "hycam"
COMPONENTS = ("shared", "experts", "router")


def modulated_layers(model: nn.Module) -> dict[int, ContextualModulation]:
    """The modulation module of each modulated layer, by layer index."""
    return dict(find_state(model).modules)


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.hidden_size)


def resolve_layer_indices(config: HyCAMConfig, num_layers: int) -> list[int]:
    if config.layers is None:
        return list(range(num_layers))
    out_of_range = [i for i in config.layers if i >= num_layers]
    if out_of_range:
        raise ValueError(
            f"HyCAMConfig.layers={config.layers} has indices {out_of_range} out of range: the model has "
            f"{num_layers} decoder layers (valid 0..{num_layers - 1})"
        )
    return list(config.layers)


def validate_for_model(model: nn.Module, config: HyCAMConfig) -> list[int]:
    """Every check :func:`attach` makes before it touches the model; returns the layer indices."""
    spec = resolve_architecture(model)
    _, layers = find_decoder(model)
    hidden = hidden_size_of(model)
    if config.num_experts and config.rank > hidden:
        raise ValueError(f"HyCAMConfig.rank={config.rank} exceeds the model's hidden_size={hidden}")
    indices = resolve_layer_indices(config, len(layers))
    for i in indices:
        check_layer(layers[i], spec, i, model_type_of(model))
    return indices


def _adapter_dtype(config: HyCAMConfig, reference: torch.Tensor) -> torch.dtype:
    return reference.dtype if config.dtype == "auto" else getattr(torch, config.dtype)


def attach(model: nn.Module, config: HyCAMConfig | None = None) -> nn.Module:
    """Modulate ``model`` in place: freeze the backbone, add CAM/HyCAM to each selected layer, return the model."""
    config = config if config is not None else HyCAMConfig()
    if is_attached(model):
        raise ValueError("this model already has HyCAM attached; call hycam_pl.detach(model) first")
    indices = validate_for_model(model, config)
    spec = resolve_architecture(model)
    decoder, layers = find_decoder(model)
    hidden = hidden_size_of(model)

    modules: dict[int, ContextualModulation] = {}
    for i in indices:
        attention = getattr(layers[i], spec.attention)
        reference = next(attention.parameters())
        module = ContextualModulation(hidden, config, i).to(
            device=reference.device, dtype=_adapter_dtype(config, reference)
        )
        modules[i] = module.train(attention.training)  # a new module defaults to training mode

    state = ModulationState(config, model_type_of(model), indices)
    state.modules = dict(modules)
    state.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    for i, module in modules.items():
        layer = layers[i]
        attention = getattr(layer, spec.attention)
        module._state = state
        attention.add_module(ADAPTER_NAME, module)
        site = attention
        if config.apply_to == "residual_sum" and spec.post_attention_norm is not None:
            site = getattr(layer, spec.post_attention_norm)
        state.handles.append(
            attention.register_forward_pre_hook(module._capture_attention_input, with_kwargs=True)
        )
        state.handles.append(site.register_forward_hook(module._modulate_site_output, with_kwargs=True))
        if config.apply_to == "residual_sum":
            norm = getattr(layer, spec.input_norm)
            state.handles.append(norm.register_forward_pre_hook(module._capture_residual))
        if config.train_norms:
            for norm_name in spec.norms:
                norm = getattr(layer, norm_name, None)
                for param_name, param in norm.named_parameters() if norm is not None else ():
                    state.norm_originals[f"layers.{i}.{norm_name}.{param_name}"] = param.detach().clone()
                    param.requires_grad_(True)
    install_forward_record(model, decoder, layers[indices[0]], state)
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove HyCAM and restore the original behaviour exactly (including norm weights and requires_grad)."""
    state = find_state(model)
    spec = resolve_architecture(model)
    decoder, layers = find_decoder(model)
    for handle in state.handles:
        handle.remove()
    for i in state.layer_indices:
        attention = getattr(layers[i], spec.attention)
        delattr(attention, ADAPTER_NAME)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for key, original in state.norm_originals.items():
            i, rest = key.split(".", 2)[1:]
            layers[int(i)].get_parameter(rest).copy_(original)
        for name, flag in state.requires_grad.items():
            if name in params:
                params[name].requires_grad_(flag)
    delattr(decoder, STATE_ATTR)
    return model


def balance_loss(model: nn.Module) -> torch.Tensor:
    """``L_bal`` of the last forward under ``config.balance_scope`` (per layer or pooled); padding excluded.

    Add ``config.balance_coef * balance_loss(model)`` to the task loss. The result is differentiable in
    training under every checkpointing mode; it is 0 for plain CAM (no router).
    """
    state = find_state(model)
    record = state.current
    if state.config.num_experts == 0 or record is None or not record.layers:
        device = next(model.parameters()).device
        return torch.zeros((), device=device)
    training = any(module.training for module in modulated_layers(model).values())
    return differentiable_balance_loss(record, bool(state.config.balance_scale_by_experts), training)


def component_of(parameter_name: str) -> str:
    marker = f".{ADAPTER_NAME}."
    if marker in parameter_name:
        return parameter_name.split(marker, 1)[1].split(".", 1)[0]
    return "backbone"


def count_parameters_by(model: nn.Module, component: Callable[[str], str]) -> dict[str, dict[str, int]]:
    """Trainable/frozen counts per ``component(parameter name)`` and in ``total``, each tensor once (tied
    embeddings count once): the one parameter counter of hycam_pl (methods' summaries, the README's table)."""
    counts: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        kind = "trainable" if param.requires_grad else "frozen"
        for key in dict.fromkeys((component(name), "total")):
            counts.setdefault(key, {"trainable": 0, "frozen": 0})[kind] += param.numel()
    counts["total"] = counts.pop("total", {"trainable": 0, "frozen": 0})
    return counts


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts per component (shared, experts, router, backbone) and in total."""
    zero = {name: {"trainable": 0, "frozen": 0} for name in (*COMPONENTS, "backbone")}
    return {**zero, **count_parameters_by(model, component_of)}
