"""Routing records and the load-balancing loss.

Every forward of the modulated decoder opens a :class:`ForwardRecord`; each modulated layer adds its routing
statistics (detached) to it. The Switch-style loss of one group of routed tokens is
``sum_k mean_b(g_bk) * mean_b(p_bk)`` (padding excluded); its *scope* (METHOD.md §3) says over which tokens:

- ``layer`` (default): the loss of every layer's own tokens, averaged over layers. Each router is pushed to
  balance itself, so no single layer can collapse.
- ``pooled``: one loss over the tokens of *all* layers pooled (the reference README's formula). Layers that
  favour different experts average out to a balanced pool, so a collapsed layer goes unpunished.

:func:`balance_from_statistics` and :func:`balance_gradient_from_statistics` compute both from per-layer sums;
any routed module can use them (or a :class:`ForwardRecord`) with its own statistics.

Why the gradient takes a detour: with re-entrant activation checkpointing the first forward of a layer runs under
``no_grad``, so nothing stashed then carries a graph. Instead each layer passes its attention output through
:class:`_InjectBalanceGradient`, an identity whose backward adds the exact gradient of ``L_bal`` with respect
to that layer's statistics. It reads the upstream scale of ``L_bal`` (lambda, gradient accumulation, AMP loss
scaling) from the record; :class:`_BalanceLoss` writes it there. ``_BalanceLoss`` takes the decoder's final
hidden states as an input, so autograd must run its backward before any layer's: the order is structural.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

BALANCE_SCOPES = ("layer", "pooled")
DEFAULT_BALANCE_SCOPE = "layer"


@dataclass
class LayerRouting:
    """Detached routing statistics of one layer in one forward."""

    gate_sum: torch.Tensor  # (K,) sum over routed tokens of the gates g
    prob_sum: torch.Tensor  # (K,) sum over routed tokens of softmax(logits)
    entropy_sum: torch.Tensor  # () sum over routed tokens of the per-token router entropy (nats)
    tokens: torch.Tensor  # () number of routed (non-padding) tokens
    example_gate_sum: torch.Tensor  # (B, K) per-sequence gate sums, for task x expert usage
    example_tokens: torch.Tensor  # (B,)
    probs: torch.Tensor  # (B*T, K) per-token softmax(logits), for histograms
    token_mask: torch.Tensor | None  # (B*T,) bool, which rows of ``probs`` are real tokens

    @property
    def load(self) -> torch.Tensor:
        """Fraction of routed tokens sent to each expert (soft gates count fractionally)."""
        return self.gate_sum / self.tokens.clamp_min(1)

    @property
    def entropy(self) -> torch.Tensor:
        """Mean per-token router entropy in nats (0 = certain, log K = uniform)."""
        return self.entropy_sum / self.tokens.clamp_min(1)

    @property
    def load_entropy(self) -> torch.Tensor:
        """Entropy of the mean load: low when the layer sends most tokens to few experts."""
        load = self.load
        return -(load * load.clamp_min(1e-12).log()).sum()


def check_scope(scope: str) -> str:
    if scope not in BALANCE_SCOPES:
        raise ValueError(f"balance scope {scope!r} is unknown; choose one of: {', '.join(BALANCE_SCOPES)}")
    return scope


def pooled_balance_loss(
    gate_sum: torch.Tensor, prob_sum: torch.Tensor, tokens: torch.Tensor, scale_by_experts: bool
) -> torch.Tensor:
    """``sum_k mean_b(g_bk) * mean_b(p_bk)`` from per-expert sums (K,) over ``tokens`` routed tokens."""
    tokens = tokens.clamp_min(1)
    value = ((gate_sum / tokens) * (prob_sum / tokens)).sum()
    return value * gate_sum.numel() if scale_by_experts else value


def balance_from_statistics(
    gate_sums: torch.Tensor,
    prob_sums: torch.Tensor,
    tokens: torch.Tensor,
    scope: str,
    scale_by_experts: bool,
) -> torch.Tensor:
    """``L_bal`` from per-layer sums: ``gate_sums``/``prob_sums`` (L, K), ``tokens`` (L,), under ``scope``.

    ``layer``: mean over the L layers of each layer's own Switch-style loss; ``pooled``: one loss over the sums
    of all layers. Differentiable in its inputs; also used on telemetry windows, so the logged value is the one
    the training loss uses.
    """
    if check_scope(scope) == "pooled":
        return pooled_balance_loss(gate_sums.sum(0), prob_sums.sum(0), tokens.sum(), scale_by_experts)
    n = tokens.clamp_min(1).unsqueeze(-1)
    value = ((gate_sums / n) * (prob_sums / n)).sum(-1).mean()
    return value * gate_sums.shape[-1] if scale_by_experts else value


def balance_gradient_from_statistics(
    gate_sums: torch.Tensor,
    prob_sums: torch.Tensor,
    tokens: torch.Tensor,
    scope: str,
    scale_by_experts: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/d gate_sums, dL/d prob_sums)``, both (L, K), of :func:`balance_from_statistics` (token counts fixed).

    Pooled: ``L = sum_k G_k P_k / N^2`` with G, P, N summed over layers, so every layer gets ``P / N^2`` and
    ``G / N^2``. Per layer: ``L = mean_l sum_k G_lk P_lk / N_l^2``, so layer l gets ``P_l / (L N_l^2)`` and
    ``G_l / (L N_l^2)``.
    """
    scale = gate_sums.shape[-1] if scale_by_experts else 1
    if check_scope(scope) == "pooled":
        coef = scale / tokens.sum().clamp_min(1) ** 2
        d_gate = (prob_sums.sum(0) * coef).expand_as(gate_sums)
        d_prob = (gate_sums.sum(0) * coef).expand_as(prob_sums)
        return d_gate, d_prob
    coef = (scale / gate_sums.shape[0]) / tokens.clamp_min(1).unsqueeze(-1) ** 2
    return prob_sums * coef, gate_sums * coef


@dataclass
class ForwardRecord:
    token_mask: torch.Tensor | None = None  # (B, T_total) from the caller's attention_mask, or None
    grad_enabled: bool = False  # whether the forward built a graph (a no_grad forward has nothing to train)
    layers: dict[Hashable, LayerRouting] = field(default_factory=dict)
    anchor: torch.Tensor | None = None  # the decoder's final hidden states (graph-carrying in training)
    upstream: torch.Tensor | None = None  # d(total loss)/d(L_bal), written during backward
    scope: str = DEFAULT_BALANCE_SCOPE  # ``layer`` or ``pooled``: one place, so loss and gradient agree
    _statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    _gradients: dict[bool, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_scope(self.scope)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-layer gate sums (L, K), probability sums (L, K) and token counts (L,), in ``layers`` order;
        cached once the forward is over."""
        if self._statistics is not None:
            return self._statistics
        stats = list(self.layers.values())
        gate = torch.stack([s.gate_sum for s in stats])
        prob = torch.stack([s.prob_sum for s in stats])
        tokens = torch.stack([s.tokens for s in stats])
        return gate, prob, tokens

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate sums, probability sums and token count pooled over layers."""
        gate, prob, tokens = self.statistics()
        return gate.sum(0), prob.sum(0), tokens.sum().clamp_min(1)

    def freeze_totals(self) -> None:
        """Called when backward starts: every layer has reported, so the statistics are final."""
        self._statistics = None
        self._gradients = {}
        self._statistics = self.statistics()

    def value(self, scale_by_experts: bool) -> torch.Tensor:
        return balance_from_statistics(*self.statistics(), self.scope, scale_by_experts)

    def gradient(self, layer: Hashable | None, scale_by_experts: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_bal``'s gradient with respect to one layer's gate and probability sums, per unit upstream."""
        if scale_by_experts not in self._gradients:
            self._gradients[scale_by_experts] = balance_gradient_from_statistics(
                *self.statistics(), self.scope, scale_by_experts
            )
        d_gate, d_prob = self._gradients[scale_by_experts]
        if layer is None:
            if self.scope != "pooled":
                raise ValueError(
                    "a per-layer balance loss needs the layer key given to attach_balance_gradient"
                )
            return d_gate[0], d_prob[0]
        row = list(self.layers).index(layer)
        return d_gate[row], d_prob[row]


def balance_value(record: ForwardRecord, scale_by_experts: bool) -> torch.Tensor:
    return record.value(scale_by_experts)


class _BalanceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor: torch.Tensor, value: torch.Tensor, record: ForwardRecord) -> torch.Tensor:
        ctx.record = record
        ctx.anchor_shape = anchor.shape
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        record: ForwardRecord = ctx.record
        grad = grad.detach()
        record.upstream = grad if record.upstream is None else record.upstream + grad
        record.freeze_totals()
        # Zeros, not None: the anchor's graph must be traversed so every layer's injection runs, even when the
        # balance loss is the only loss.
        return grad.new_zeros(ctx.anchor_shape), None, None


class _InjectBalanceGradient(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        output: torch.Tensor,
        gate_sum: torch.Tensor,
        prob_sum: torch.Tensor,
        record: ForwardRecord,
        scale_by_experts: bool,
        layer: Hashable | None,
    ) -> torch.Tensor:
        ctx.record = record
        ctx.scale_by_experts = scale_by_experts
        ctx.layer = layer
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        record: ForwardRecord = ctx.record
        if record.upstream is None:  # L_bal is not part of the loss being differentiated
            return grad_output, None, None, None, None, None
        d_gate, d_prob = record.gradient(ctx.layer, ctx.scale_by_experts)
        return grad_output, d_gate * record.upstream, d_prob * record.upstream, None, None, None


def attach_balance_gradient(
    output: torch.Tensor,
    gate_sum: torch.Tensor,
    prob_sum: torch.Tensor,
    record: ForwardRecord,
    scale_by_experts: bool,
    layer: Hashable | None = None,
) -> torch.Tensor:
    """Route ``L_bal``'s gradient into one layer's graph-carrying ``gate_sum``/``prob_sum`` through ``output``.

    ``layer`` is the key under which that layer's statistics sit in ``record.layers`` (needed for the ``layer``
    scope, where each layer's gradient depends on its own statistics).
    """
    return _InjectBalanceGradient.apply(output, gate_sum, prob_sum, record, scale_by_experts, layer)


def differentiable_balance_loss(
    record: ForwardRecord, scale_by_experts: bool, training: bool
) -> torch.Tensor:
    """``L_bal`` of ``record`` under ``record.scope``; in training, a graph node whose backward reaches the routers."""
    value = balance_value(record, scale_by_experts)
    if not torch.is_grad_enabled() or not training or not record.grad_enabled:
        return value
    anchor = record.anchor
    if anchor is None or not anchor.requires_grad:
        raise RuntimeError(
            "HyCAM balance loss: the last forward in training mode produced no graph-carrying decoder output, so "
            "the balance loss cannot reach the routers (was the model run under no_grad, or its layers called "
            "directly instead of through the decoder?)"
        )
    return _BalanceLoss.apply(anchor, value, record)
