"""Routing records and the load-balancing loss.

Every forward of the modulated decoder opens a :class:`ForwardRecord`; each modulated layer adds its routing
statistics (detached) to it. ``L_bal = sum_k mean_b(g_bk) * mean_b(p_bk)`` pools the routed tokens of *all*
layers (METHOD.md §3), padding excluded.

Why the gradient takes a detour: with re-entrant activation checkpointing the first forward of a layer runs under
``no_grad``, so nothing stashed then carries a graph. Instead each layer passes its attention output through
:class:`_InjectBalanceGradient`, an identity whose backward adds the exact gradient of ``L_bal`` with respect
to that layer's statistics. It reads the upstream scale of ``L_bal`` (lambda, gradient accumulation, AMP loss
scaling) from the record; :class:`_BalanceLoss` writes it there. ``_BalanceLoss`` takes the decoder's final
hidden states as an input, so autograd must run its backward before any layer's: the order is structural.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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


@dataclass
class ForwardRecord:
    token_mask: torch.Tensor | None = None  # (B, T_total) from the caller's attention_mask, or None
    grad_enabled: bool = False  # whether the forward built a graph (a no_grad forward has nothing to train)
    layers: dict[int, LayerRouting] = field(default_factory=dict)
    anchor: torch.Tensor | None = None  # the decoder's final hidden states (graph-carrying in training)
    upstream: torch.Tensor | None = None  # d(total loss)/d(L_bal), written during backward
    _totals: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate sums, probability sums and token count pooled over layers; cached once the forward is over."""
        if self._totals is not None:
            return self._totals
        stats = list(self.layers.values())
        gate = torch.stack([s.gate_sum for s in stats]).sum(0)
        prob = torch.stack([s.prob_sum for s in stats]).sum(0)
        tokens = torch.stack([s.tokens for s in stats]).sum().clamp_min(1)
        return gate, prob, tokens

    def freeze_totals(self) -> None:
        """Called when backward starts: every layer has reported, so the pooled totals are final."""
        self._totals = None
        self._totals = self.totals()


def pooled_balance_loss(
    gate_sum: torch.Tensor, prob_sum: torch.Tensor, tokens: torch.Tensor, scale_by_experts: bool
) -> torch.Tensor:
    """``sum_k mean_b(g_bk) * mean_b(p_bk)`` from per-expert sums (K,) over ``tokens`` routed tokens."""
    tokens = tokens.clamp_min(1)
    value = ((gate_sum / tokens) * (prob_sum / tokens)).sum()
    return value * gate_sum.numel() if scale_by_experts else value


def balance_value(record: ForwardRecord, scale_by_experts: bool) -> torch.Tensor:
    return pooled_balance_loss(*record.totals(), scale_by_experts)


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
    ) -> torch.Tensor:
        ctx.record = record
        ctx.scale_by_experts = scale_by_experts
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        record: ForwardRecord = ctx.record
        if record.upstream is None:  # L_bal is not part of the loss being differentiated
            return grad_output, None, None, None, None
        gate, prob, tokens = record.totals()
        coef = record.upstream / (tokens * tokens)
        if ctx.scale_by_experts:
            coef = coef * gate.numel()
        # L = sum_k G_k P_k / N^2 with G, P summed over all layers: dL/dG_l = P / N^2, dL/dP_l = G / N^2.
        return grad_output, prob * coef, gate * coef, None, None


def attach_balance_gradient(
    output: torch.Tensor,
    gate_sum: torch.Tensor,
    prob_sum: torch.Tensor,
    record: ForwardRecord,
    scale_by_experts: bool,
) -> torch.Tensor:
    return _InjectBalanceGradient.apply(output, gate_sum, prob_sum, record, scale_by_experts)


def differentiable_balance_loss(
    record: ForwardRecord, scale_by_experts: bool, training: bool
) -> torch.Tensor:
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
