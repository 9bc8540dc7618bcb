"""Mixtures of LoRA experts on the linear projections of stock Hugging Face decoders: MoLoRA and HydraLoRA.

- ``molora``: K LoRA experts ``(A_k, B_k)`` on each target projection, ``W x + s * sum_k g_k(x) B_k A_k x``.
- ``hydralora``: one shared down-projection ``A`` and K up-projections ``B_k``, ``W x + s * sum_k g_k(x) B_k A x``.

Routing reuses HyCAM's machinery: one router per decoder layer reads the attention input ``x`` (exactly what
HyCAM's router reads) and its per-token gates mix the experts of every target projection of that layer. The
router is HyCAM's :class:`GumbelRouter` (``gumbel_top1``: hard Gumbel-softmax, straight-through) or a soft
top-k softmax (``softmax_topk``); its statistics go into the same per-forward record through the same
:func:`record_routing`, so the balance loss (per layer or pooled, gradient injected under every checkpointing
mode) and the routing telemetry (``router/layer_<i>/...``) work unchanged. The original MoLoRA and HydraLoRA
put one router on each adapted projection; one per layer keeps the comparison with HyCAM about the experts,
not about the routing signal.

Like HyCAM, modules are children of existing modules (``<proj>.lora_mixture``, ``self_attn.mixture_router``)
acting through forward hooks, so no base parameter is renamed. Plain PyTorch + transformers: no Lightning.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hycam_pl.modulation.architectures import check_layer, find_decoder, model_type_of, resolve_architecture
from hycam_pl.modulation.balance import BALANCE_SCOPES, DEFAULT_BALANCE_SCOPE, differentiable_balance_loss
from hycam_pl.modulation.config import is_int, is_number, one_of, require_option
from hycam_pl.modulation.model import hidden_size_of, resolve_layer_indices
from hycam_pl.modulation.persistence import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterError,
    base_identity,
    check_base_matches,
    check_sizes_fit_tensors,
    check_tensor_values,
    read_adapter_weights,
    read_json_config,
    tensor_problems,
    write_adapter_files,
)
from hycam_pl.modulation.router import GumbelRouter, Routing, TopKSoftmaxRouter
from hycam_pl.modulation.routing import (
    STATE_ATTR,
    ModulationState,
    find_state,
    flat_token_mask,
    install_forward_record,
    is_attached,
    record_routing,
)

KINDS = ("molora", "hydralora")
ROUTINGS = ("gumbel_top1", "softmax_topk")
EVAL_ROUTING = ("argmax", "softmax")
DTYPES = ("float32", "bfloat16", "float16", "auto")
EXPERTS_NAME = "lora_mixture"  # child of every adapted projection
ROUTER_NAME = "mixture_router"  # child of every adapted layer's attention
# All four attention projections, in every supported family: the block HyCAM modulates.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
FORMAT_VERSION = 1


@dataclass
class MixtureConfig:
    """MoLoRA / HydraLoRA settings (the options of ``MoLoRAMethod`` / ``HydraLoRAMethod``).

    ``r`` and ``alpha`` are each expert's LoRA rank and scale numerator (scale ``alpha / r``); ``top_k`` is used
    by ``softmax_topk`` only, ``tau`` and ``eval_routing`` by ``gumbel_top1`` only. The balance options mean
    what they mean for HyCAM.
    """

    kind: str = "molora"
    num_experts: int = 4
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ATTENTION_PROJECTIONS))
    routing: str = "gumbel_top1"
    top_k: int = 2
    tau: float = 0.5
    eval_routing: str = "argmax"
    router_bias: bool = False
    balance_coef: float = 0.01
    balance_scale_by_experts: bool = False
    balance_scope: str = DEFAULT_BALANCE_SCOPE
    layers: list[int] | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, "kind", self.kind, one_of(KINDS))
        _require(is_int(self.num_experts) and self.num_experts >= 1, "num_experts", self.num_experts, ">= 1")
        _require(is_int(self.r) and self.r >= 1, "r", self.r, "an integer >= 1")
        _require(is_number(self.alpha) and self.alpha > 0, "alpha", self.alpha, "a number > 0")
        _require(is_number(self.dropout) and 0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        targets = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        _require(
            isinstance(targets, (list, tuple))
            and len(targets) > 0
            and all(isinstance(t, str) for t in targets),
            "target_modules",
            self.target_modules,
            "a non-empty list of projection names (e.g. q_proj, v_proj, down_proj)",
        )
        self.target_modules = list(targets)
        _require(self.routing in ROUTINGS, "routing", self.routing, one_of(ROUTINGS))
        _require(
            is_int(self.top_k) and 1 <= self.top_k <= self.num_experts,
            "top_k",
            self.top_k,
            f"an integer in [1, num_experts={self.num_experts}]",
        )
        _require(is_number(self.tau) and self.tau > 0, "tau", self.tau, "a number > 0")
        _require(self.eval_routing in EVAL_ROUTING, "eval_routing", self.eval_routing, one_of(EVAL_ROUTING))
        _require(isinstance(self.router_bias, bool), "router_bias", self.router_bias, "true or false")
        _require(
            is_number(self.balance_coef) and self.balance_coef >= 0,
            "balance_coef",
            self.balance_coef,
            "a number >= 0",
        )
        _require(
            isinstance(self.balance_scale_by_experts, bool),
            "balance_scale_by_experts",
            self.balance_scale_by_experts,
            "true or false",
        )
        _require(
            self.balance_scope in BALANCE_SCOPES, "balance_scope", self.balance_scope, one_of(BALANCE_SCOPES)
        )
        _require(self.dtype in DTYPES, "dtype", self.dtype, one_of(DTYPES))
        if self.layers is not None:
            layers = list(self.layers)
            _require(
                len(layers) > 0
                and all(is_int(i) and i >= 0 for i in layers)
                and len(set(layers)) == len(layers),
                "layers",
                self.layers,
                "null (all layers) or a non-empty list of distinct layer indices >= 0",
            )
            self.layers = sorted(layers)

    @property
    def scaling(self) -> float:
        return float(self.alpha) / float(self.r)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MixtureConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MixtureConfig: unknown option(s) {unknown}; known options: {sorted(known)}")
        return cls(**values)


class LayerRouter(nn.Module):
    """One decoder layer's router. A pre-hook on the attention routes its input ``x`` per token, keeps the gates
    for the layer's adapted projections, records the statistics and threads the balance gradient into ``x``."""

    def __init__(self, hidden_size: int, config: MixtureConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.scale_by_experts = config.balance_scale_by_experts
        if config.routing == "gumbel_top1":
            self.router: nn.Module = GumbelRouter(
                hidden_size, config.num_experts, config.tau, True, config.eval_routing, config.router_bias
            )
        else:
            self.router = TopKSoftmaxRouter(hidden_size, config.num_experts, config.top_k, config.router_bias)
        self._state: ModulationState | None = None
        self.gates: torch.Tensor | None = None  # (tokens, K) of the layer's current forward

    def forward(self, flat: torch.Tensor) -> Routing:
        """Route ``flat`` (tokens, d). Called through ``self(...)`` from the hook, so wrappers that act on a
        module's forward (FSDP2 gathering this unit's sharded parameters) see the call."""
        return self.router(flat)

    def _route(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        flat = x.reshape(-1, x.shape[-1])
        routing = self(flat)
        self.gates = routing.gates
        record = self._state.record_for_forward() if self._state is not None else None
        if record is None:
            return None
        token_mask = flat_token_mask(record.token_mask, x.shape[:-1], self.layer_index)
        carried = record_routing(
            x, routing, token_mask, x.shape[0], record, self.layer_index, self.training, self.scale_by_experts
        )
        if carried is x:
            return None
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": carried}
        return (carried, *args[1:]), kwargs


class LoRAMixture(nn.Module):
    """K LoRA experts of one projection, mixed by the layer's gates: ``s * sum_k g_k B_k A_k x``.

    ``lora_A`` is (d_in, K*r) for MoLoRA (each expert's down-projection side by side) or (d_in, r) for HydraLoRA
    (shared); ``lora_B`` is (K, r, d_out), zero-initialised so the model starts unchanged. Gating the (tokens, K,
    r) down-projections and contracting over (K, r) at once makes the mixture one matmul per factor.
    """

    def __init__(
        self, in_features: int, out_features: int, config: MixtureConfig, name: str, layer_index: int
    ) -> None:
        super().__init__()
        k, r = config.num_experts, config.r
        self.num_experts, self.rank = k, r
        self.in_features, self.out_features = in_features, out_features
        self.shared_down = config.kind == "hydralora"
        self.scaling = config.scaling
        self.name = name
        self.layer_index = layer_index
        self.lora_A = nn.Parameter(torch.empty(in_features, r if self.shared_down else k * r))
        self.lora_B = nn.Parameter(torch.zeros(k, r, out_features))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Each expert's A like nn.Linear(d_in, r).weight (Kaiming-uniform, fan_in = d_in), as peft's LoRA.
        nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x: (tokens, d_in), gates: (tokens, K) -> (tokens, d_out)."""
        k, r = self.num_experts, self.rank
        down = self.dropout(x) @ self.lora_A
        gates = gates.to(down.dtype).unsqueeze(-1)
        mixed = down.unsqueeze(1) * gates if self.shared_down else down.view(-1, k, r) * gates
        return (mixed.reshape(-1, k * r) @ self.lora_B.reshape(k * r, -1)) * self.scaling

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return self.delta(x, gates)

    def _add_delta(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        router: LayerRouter = self.__dict__["_router"]
        gates = router.gates
        x = args[0]
        flat = x.reshape(-1, x.shape[-1])
        if gates is None or gates.shape[0] != flat.shape[0]:
            raise RuntimeError(
                f"mixture layer {self.layer_index}: {self.name} ran without gates for its {flat.shape[0]} tokens; "
                "the layer does not call its attention before this projection with the same tokens"
            )
        if not torch.is_autocast_enabled(flat.device.type):
            flat = flat.to(self.lora_A.dtype)
        delta = self(flat, gates)  # through forward: FSDP2 gathers this unit's parameters around the call
        return output + delta.view(*output.shape[:-1], delta.shape[-1]).to(output.dtype)

    def extra_repr(self) -> str:
        kind = "hydralora" if self.shared_down else "molora"
        return f"{kind}, experts={self.num_experts}, r={self.rank}, scaling={self.scaling}"


def _targets_of(layer: nn.Module, config: MixtureConfig) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in config.target_modules
    ]


def validate_mixture_for_model(model: nn.Module, config: MixtureConfig) -> list[int]:
    """The checks :func:`attach_mixture` makes before it touches the model; returns the layer indices."""
    spec = resolve_architecture(model)
    _, layers = find_decoder(model)
    indices = resolve_layer_indices(config, len(layers))
    for i in indices:
        check_layer(layers[i], spec, i, model_type_of(model))
        found = {name.rsplit(".", 1)[-1] for name, _ in _targets_of(layers[i], config)}
        missing = [t for t in config.target_modules if t not in found]
        if missing:
            linears = sorted(
                {n.rsplit(".", 1)[-1] for n, m in layers[i].named_modules() if isinstance(m, nn.Linear)}
            )
            raise ValueError(
                f"target_modules {missing} not found in decoder layer {i} of model_type {model_type_of(model)!r}; "
                f"its linear projections are: {', '.join(linears)}"
            )
    return indices


def attach_mixture(model: nn.Module, config: MixtureConfig) -> nn.Module:
    """Freeze ``model`` and add the LoRA mixture to the selected layers in place; return the model."""
    if is_attached(model):
        raise ValueError("this model already has a routed adapter (HyCAM or a LoRA mixture) attached")
    indices = validate_mixture_for_model(model, config)
    spec = resolve_architecture(model)
    decoder, layers = find_decoder(model)
    hidden = hidden_size_of(model)
    state = ModulationState(config, model_type_of(model), indices)  # HyCAM's per-model bookkeeping, reused
    state.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    plan = []
    for i in indices:
        attention = getattr(layers[i], spec.attention)
        reference = next(attention.parameters())
        dtype = reference.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        router = (
            LayerRouter(hidden, config, i).to(device=reference.device, dtype=dtype).train(attention.training)
        )
        experts = [
            (linear, LoRAMixture(linear.in_features, linear.out_features, config, name, i))
            for name, linear in _targets_of(layers[i], config)
        ]
        plan.append(
            (attention, router, [(lin, e.to(device=reference.device, dtype=dtype)) for lin, e in experts])
        )
    model.requires_grad_(False)
    for attention, router, experts in plan:
        router._state = state
        attention.add_module(ROUTER_NAME, router)
        state.handles.append(attention.register_forward_pre_hook(router._route, with_kwargs=True))
        for linear, mixture in experts:
            mixture.__dict__["_router"] = router  # a plain reference: not a submodule, not saved twice
            linear.add_module(EXPERTS_NAME, mixture.train(attention.training))
            state.handles.append(linear.register_forward_hook(mixture._add_delta))
    install_forward_record(model, decoder, layers[indices[0]], state)
    return model


def detach_mixture(model: nn.Module) -> nn.Module:
    """Remove the mixture and restore the original model (and its ``requires_grad`` flags) exactly."""
    state = find_state(model)
    decoder, layers = find_decoder(model)
    for handle in state.handles:
        handle.remove()
    for i in state.layer_indices:
        for module in list(layers[i].modules()):
            for name in (EXPERTS_NAME, ROUTER_NAME):
                if name in module._modules:
                    delattr(module, name)
    params = dict(model.named_parameters())
    for name, flag in state.requires_grad.items():
        if name in params:
            params[name].requires_grad_(flag)
    delattr(decoder, STATE_ATTR)
    return model


def routers(model: nn.Module) -> list[LayerRouter]:
    return [m for m in model.modules() if isinstance(m, LayerRouter)]


def mixture_balance_loss(model: nn.Module) -> torch.Tensor:
    """``L_bal`` of the last forward over the layer routers, as :func:`hycam_pl.balance_loss` for HyCAM."""
    state = find_state(model)
    record = state.current
    if record is None or not record.layers:
        return torch.zeros((), device=next(model.parameters()).device)
    training = any(router.training for router in routers(model))
    return differentiable_balance_loss(record, bool(state.config.balance_scale_by_experts), training)


def component_of(parameter_name: str) -> str:
    if f".{ROUTER_NAME}." in parameter_name:
        return "router"
    if f".{EXPERTS_NAME}." in parameter_name:
        return "experts"
    return "backbone"


# ------------------------------------------------------------------------------------------ persistence
def mixture_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The mixture's tensors keyed ``layers.<i>.<path inside the layer>``, independent of the wrapping class."""
    state = find_state(model)
    _, layers = find_decoder(model)
    return {
        f"layers.{i}.{name}": param.detach()
        for i in state.layer_indices
        for name, param in layers[i].named_parameters()
        if component_of(f".{name}") != "backbone"
    }


def save_mixture(model: nn.Module, directory: str | os.PathLike) -> Path:
    """``adapter_model.safetensors`` + ``adapter_config.json`` (config, base identity, checksum), atomically."""
    state = find_state(model)
    meta = {
        "format_version": FORMAT_VERSION,
        "mixture_config": state.config.to_dict(),
        "layer_indices": state.layer_indices,
        "base_model": base_identity(model),
    }
    return write_adapter_files(directory, mixture_state_dict(model), meta)


def load_mixture(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Attach the saved mixture to a fresh base ``model`` and load its weights; refuses another base model.
    On any error the model is left as it was."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"adapter config not found: {path}")
    meta = read_json_config(path)
    try:
        config = MixtureConfig.from_dict(dict(meta["mixture_config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise AdapterError(f"{path} is not a LoRA-mixture adapter config: {error}") from None
    check_base_matches(model, meta, directory)
    tensors = read_adapter_weights(directory, meta)
    check_tensor_values(tensors, f"adapter weights {directory / WEIGHTS_FILE}")
    check_sizes_fit_tensors(meta["mixture_config"], tensors, f"adapter config {path}")
    attach_mixture(model, config)
    try:
        current = mixture_state_dict(model)
        problems = tensor_problems({k: tuple(v.shape) for k, v in current.items()}, tensors)
        if problems:
            raise AdapterError(
                f"adapter weights {directory / WEIGHTS_FILE} do not fit {CONFIG_FILE}: " + "; ".join(problems)
            )
        _, layers = find_decoder(model)
        with torch.no_grad():
            for key, value in tensors.items():
                _, index, rest = key.split(".", 2)
                target = layers[int(index)].get_parameter(rest)
                target.copy_(value.to(device=target.device, dtype=target.dtype))
    except BaseException:
        detach_mixture(model)
        raise
    return model


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    require_option("MixtureConfig", ok, name, value, allowed)
