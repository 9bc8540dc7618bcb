"""The routing machinery every routed adapter shares (HyCAM's layers and the LoRA mixtures): the per-model routing
state on the decoder, one routing record per decoder forward (opened and closed by hooks), the padding mask of
the forward's tokens, and how one router's statistics are stored and its balance-loss gradient injected.

Why its own module: the methods that route (``hycam_pl.modulation.model``, ``hycam_pl.methods.lora_mixture``) build
on it, and the readers of routing (balance loss, telemetry, generation) need nothing method-specific.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hycam_pl.modulation.balance import (
    DEFAULT_BALANCE_SCOPE,
    ForwardRecord,
    LayerRouting,
    attach_balance_gradient,
)
from hycam_pl.modulation.router import Routing

STATE_ATTR = "_hycam_state"


class ModulationState:
    """Per-model bookkeeping of a routed adapter: its config (HyCAM's or a mixture's: ``num_experts``,
    ``balance_scope``, ...), the hooks to remove, what to restore on detach, the last forward's record."""

    def __init__(self, config: Any, model_type: str, layer_indices: list[int]) -> None:
        self.config = config
        self.model_type = model_type
        self.layer_indices = layer_indices
        # The modules that run, by layer index: attach's, or the active adapter's under peft (hycam_pl.peft).
        self.modules: dict[int, Any] = {}
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


def record_routing(
    carrier: torch.Tensor,
    routing: Routing,
    token_mask: torch.Tensor | None,
    batch_size: int,
    record: Any,
    key: int,
    training: bool,
    scale_by_experts: bool,
) -> torch.Tensor:
    """Store one router's statistics in ``record.layers[key]`` and, in training, return ``carrier`` (any tensor
    on the loss path) through the identity that injects the balance loss's gradient into this router.

    Shared by every routed module (HyCAM's layers, the LoRA mixtures), so the balance loss and the routing
    telemetry treat them alike.
    """
    gates, probs = routing.gates, routing.probs
    weights = token_mask.to(probs.dtype).unsqueeze(-1) if token_mask is not None else None
    masked_gates = gates * weights if weights is not None else gates
    masked_probs = probs * weights if weights is not None else probs
    gate_sum = masked_gates.sum(0)
    prob_sum = masked_probs.sum(0)
    if key not in record.layers:  # the first call; a checkpoint recompute must not overwrite
        with torch.no_grad():
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
            if weights is not None:
                entropy = entropy * weights.squeeze(-1)
            tokens = weights.sum() if weights is not None else probs.new_full((), float(probs.shape[0]))
            per_example = masked_gates.detach().view(batch_size, -1, gates.shape[-1])
            example_tokens = (
                weights.view(batch_size, -1).sum(1)
                if weights is not None
                else probs.new_full((batch_size,), probs.shape[0] / batch_size)
            )
            record.layers[key] = LayerRouting(
                gate_sum=gate_sum.detach(),
                prob_sum=prob_sum.detach(),
                entropy_sum=entropy.sum(),
                tokens=tokens,
                example_gate_sum=per_example.sum(1),
                example_tokens=example_tokens,
                probs=probs.detach(),
                token_mask=token_mask,
            )
    if training and torch.is_grad_enabled():
        carrier = attach_balance_gradient(carrier, gate_sum, prob_sum, record, scale_by_experts, key)
    return carrier


def flat_token_mask(
    mask: torch.Tensor | None, leading_shape: torch.Size, layer_index: int
) -> torch.Tensor | None:
    """The (B*T,) bool mask of real tokens for this forward's (B, T) hidden states, or None for "all"."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ValueError(
            f"HyCAM layer {layer_index}: got a {mask.dim()}-D attention_mask; the balance loss and routing statistics "
            "exclude padding and need the 2-D (batch, length) padding mask (or none, if there is no padding)"
        )
    batch, length = leading_shape
    if mask.shape[0] != batch or mask.shape[1] < length:
        raise ValueError(
            f"HyCAM layer {layer_index}: attention_mask of shape {tuple(mask.shape)} does not cover hidden "
            f"states of shape ({batch}, {length}); pass the 2-D padding mask given to the model."
        )
    # With a KV cache the mask spans past + new tokens; the hidden states are the newest ``length``.
    return mask[:, -length:].reshape(-1).bool()
