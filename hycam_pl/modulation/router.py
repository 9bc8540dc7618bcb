"""The per-token router: Gumbel-softmax in training, noise-free in evaluation (METHOD.md §3)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_noise(logits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel samples shaped like ``logits``; module-level so tests can substitute fixed noise."""
    return -torch.empty_like(logits).exponential_().log()


def float32_logits(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Router logits in float32 even under autocast: the router is tiny, and bf16 logits make argmax ties and
    coarse softmax probabilities."""
    if x.dtype == linear.weight.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
        return F.linear(
            x, linear.weight, linear.bias
        )  # already float32: skip the autocast context (per token)
    with torch.autocast(x.device.type, enabled=False):
        bias = None if linear.bias is None else linear.bias.float()
        return F.linear(x.float(), linear.weight.float(), bias)


def one_hot(index: torch.Tensor, num_experts: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.one_hot(index, num_experts).to(dtype)`` without its range check (a min/max pass over ``index``, which
    cannot fail here: ``index`` is an argmax over ``num_experts`` columns)."""
    return torch.zeros(*index.shape, num_experts, dtype=dtype, device=index.device).scatter_(
        -1, index.unsqueeze(-1), 1.0
    )


class Routing(NamedTuple):
    gates: torch.Tensor  # (tokens, K) weights used to mix the experts (one-hot values under hard routing)
    probs: torch.Tensor  # (tokens, K) noise-free softmax(logits): the balance loss and entropy use these
    logits: torch.Tensor  # (tokens, K)
    # (tokens,) the expert each token's gate selects when the gate *values* are one-hot (hard training routing,
    # argmax evaluation), else None. Lets the experts compute only the selected expert's output.
    index: torch.Tensor | None = None


class GumbelRouter(nn.Module):
    """``l(x) = x W_r + b_r``; trained (unlike the reference code, whose router weights never get gradients)."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        tau: float,
        hard: bool,
        eval_routing: str,
        bias: bool,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_experts, bias=bias)
        self.num_experts = num_experts
        self.tau = tau
        self.hard = hard
        self.eval_routing = eval_routing

    def forward(self, x: torch.Tensor) -> Routing:
        logits = float32_logits(self.linear, x)
        probs = logits.softmax(dim=-1)
        if self.training:
            soft = ((logits + gumbel_noise(logits)) / self.tau).softmax(dim=-1)
            if self.hard:
                index = soft.argmax(dim=-1)
                hard = one_hot(index, self.num_experts, soft.dtype)
                gates = hard - soft.detach() + soft  # straight-through: value one-hot, gradient of ``soft``
                return Routing(gates, probs, logits, index)
            return Routing(soft, probs, logits)
        if self.eval_routing == "argmax":
            index = logits.argmax(dim=-1)
            return Routing(one_hot(index, self.num_experts, logits.dtype), probs, logits, index)
        return Routing((logits / self.tau).softmax(dim=-1), probs, logits)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}, eval_routing={self.eval_routing!r}"


class TopKSoftmaxRouter(nn.Module):
    """Soft top-k routing (no noise): the softmax of the ``top_k`` largest logits, zero elsewhere, in training
    and evaluation alike. ``probs`` is the full softmax, as for :class:`GumbelRouter`, so the balance loss and
    telemetry read both routers the same way."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_experts, bias=bias)
        self.num_experts = num_experts
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> Routing:
        logits = float32_logits(self.linear, x)
        probs = logits.softmax(dim=-1)
        top, index = logits.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, index, top.softmax(dim=-1))
        return Routing(gates, probs, logits)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}"
