"""Attach HyCAM to a stock Hugging Face decoder, detach it, and read what it did (balance loss, routing, sizes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hycam_pl.modulation.architectures import (
    check_layer,
    find_decoder,
    model_type_of,
    resolve_architecture,
)
from hycam_pl.modulation.balance import (
    DEFAULT_BALANCE_SCOPE,
    ForwardRecord,
    LayerRouting,
    differentiable_balance_loss,
)
from hycam_pl.modulation.config import HyCAMConfig
from hycam_pl.modulation.layer import ContextualModulation

ADAPTER_NAME = "hycam"
STATE_ATTR = "_hycam_state"
COMPONENTS = ("shared", "experts", "router")


class ModulationState:
    """Per-model bookkeeping: the config, the hooks to remove, what to restore on detach, the last forward."""

    def __init__(self, config: HyCAMConfig, model_type: str, layer_indices: list[int]) -> None:
        self.config = config
        self.model_type = model_type
        self.layer_indices = layer_indices
        # The modules that run, by layer index: attach's, or the active adapter's under peft (hycam_pl.peft).
        self.modules: dict[int, ContextualModulation] = {}
        self.handles: list[Any] = []
        self.requires_grad: dict[str, bool] = {}
        self.norm_originals: dict[str, torch.Tensor] = {}
        self.current: ForwardRecord | None = None
        self.recording = True  # off inside ``without_routing_records`` (generation)

    @property
    def balance_scope(self) -> str:
        return self.config.balance_scope or DEFAULT_BALANCE_SCOPE

    def record_for_forward(self) -> ForwardRecord | None:
        if not self.recording:
            return None
        if self.current is None:
            self.current = ForwardRecord(scope=self.balance_scope)
        return self.current

    # Hooks on the module that owns the decoder layers: one record per forward of the decoder.
    def _start_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.current is not None:
            # The previous record's anchor carries its graph, whose balance nodes hold the record: a cycle
            # through autograd's C++ nodes that Python's collector cannot see, which kept every training
            # step's record and graph nodes alive. Backward needs the record, not the anchor.
            self.current.anchor = None
        if not self.recording:
            self.current = None
            return
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.current = ForwardRecord(
            token_mask=mask if isinstance(mask, torch.Tensor) else None,
            grad_enabled=torch.is_grad_enabled(),
            scope=self.balance_scope,
        )

    def _finish_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None and isinstance(output, (tuple, list)):
            hidden = output[0]
        if self.current is not None and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            self.current.anchor = hidden


class _InputsRequireGrad:
    """Makes the embeddings' output require grad under *re-entrant* checkpointing, so re-entrant checkpoints of
    a frozen backbone still backpropagate into the modulation (the trick of ``enable_input_require_grads``).
    Non-re-entrant checkpointing does not need it, and is spared the extra backward through frozen layers."""

    def __init__(self, first_layer: nn.Module) -> None:
        self.first_layer = first_layer

    def _reentrant(self) -> bool:
        checkpoint = getattr(self.first_layer, "_gradient_checkpointing_func", None)
        return bool(getattr(checkpoint, "keywords", {}).get("use_reentrant", True))

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if (
            torch.is_grad_enabled()
            and getattr(self.first_layer, "gradient_checkpointing", False)
            and self.first_layer.training
            and self._reentrant()
            and output.is_floating_point()
            and not output.requires_grad
        ):
            output.requires_grad_(True)


def find_state(model: nn.Module, required: bool = True) -> ModulationState | None:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        for module in model.modules():
            state = getattr(module, STATE_ATTR, None)
            if state is not None:
                break
    if state is None and required:
        raise ValueError(
            f"{type(model).__name__} has no HyCAM attached; call hycam_pl.attach(model, config) first"
        )
    return state


def is_attached(model: nn.Module) -> bool:
    return find_state(model, required=False) is not None


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


def install_forward_record(
    model: nn.Module, decoder: nn.Module, first_layer: nn.Module, state: ModulationState
) -> None:
    """The hooks every routed adapter shares: one routing record per decoder forward (opened and closed around
    it), inputs that require grad from the first adapted layer on (re-entrant checkpointing), the state on the
    decoder."""
    state.handles.append(decoder.register_forward_pre_hook(state._start_forward, with_kwargs=True))
    state.handles.append(decoder.register_forward_hook(state._finish_forward, with_kwargs=True))
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        state.handles.append(embeddings.register_forward_hook(_InputsRequireGrad(first_layer)))
    setattr(decoder, STATE_ATTR, state)


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


@contextmanager
def without_routing_records(model: nn.Module) -> Iterator[None]:
    """Forwards inside record no routing statistics (no balance loss, no telemetry; outputs unchanged).

    For generation: nothing reads the statistics of a decoding step, and at one token per step computing them
    costs more than the experts themselves. Models without HyCAM or a mixture are left as they are.
    """
    state = find_state(model, required=False)
    if state is None:
        yield
        return
    previous, state.recording = state.recording, False
    try:
        yield
    finally:
        state.recording = previous


def routing_statistics(model: nn.Module) -> dict[int, LayerRouting]:
    """Per modulated layer, the routing statistics of the last forward (empty for plain CAM)."""
    state = find_state(model)
    return dict(state.current.layers) if state.current is not None else {}


def component_of(parameter_name: str) -> str:
    marker = f".{ADAPTER_NAME}."
    if marker in parameter_name:
        return parameter_name.split(marker, 1)[1].split(".", 1)[0]
    return "backbone"


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts per component (shared, experts, router, backbone) and in total."""
    counts = {name: {"trainable": 0, "frozen": 0} for name in (*COMPONENTS, "backbone", "total")}
    for name, param in model.named_parameters():
        kind = "trainable" if param.requires_grad else "frozen"
        counts[component_of(name)][kind] += param.numel()
        counts["total"][kind] += param.numel()
    return counts
