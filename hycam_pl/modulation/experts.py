"""The K lightweight specialised CAMs, stored stacked so all experts run as one batched matmul per factor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class StackedExperts(nn.Module):
    """``E_k(x) = SiLU(s * (((x A_k + a_k) N_k + n_k) B_k + b_k))`` for k = 1..K at once.

    ``A`` (K, d, r) and ``N`` (K, r, r) are Kaiming-uniform like ``nn.Linear``; ``B`` (K, r, d) and its bias are
    zero so every expert outputs SiLU(0) = 0 at initialisation. The input is shared by all experts, so the first
    factor is a single (d, K*r) matmul; the other two are batched over K.
    """

    def __init__(self, hidden_size: int, num_experts: int, rank: int, scaling: float, bias: bool) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.rank = rank
        self.scaling = scaling
        k, d, r = num_experts, hidden_size, rank
        self.weight_A = nn.Parameter(torch.empty(k, d, r))
        self.weight_N = nn.Parameter(torch.empty(k, r, r))
        self.weight_B = nn.Parameter(torch.empty(k, r, d))
        if bias:
            self.bias_A = nn.Parameter(torch.empty(k, r))
            self.bias_N = nn.Parameter(torch.empty(k, r))
            self.bias_B = nn.Parameter(torch.empty(k, d))
        else:
            self.register_parameter("bias_A", None)
            self.register_parameter("bias_N", None)
            self.register_parameter("bias_B", None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for weight, bias in ((self.weight_A, self.bias_A), (self.weight_N, self.bias_N)):
            fan_in = weight.shape[1]
            for k in range(self.num_experts):
                # Same distribution as nn.Linear(fan_in, fan_out) (whose weight is stored transposed).
                nn.init.kaiming_uniform_(weight[k].T, a=math.sqrt(5))
            if bias is not None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(bias, -bound, bound)
        nn.init.zeros_(self.weight_B)
        if self.bias_B is not None:
            nn.init.zeros_(self.bias_B)

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        """x: (tokens, d) -> ``(x A_k + a_k) N_k + n_k`` for every expert, (K, tokens, r)."""
        k, d, r = self.num_experts, self.hidden_size, self.rank
        down = x @ self.weight_A.permute(1, 0, 2).reshape(
            d, k * r
        )  # (tokens, K*r), one matmul for all experts
        if self.bias_A is not None:
            down = down + self.bias_A.reshape(-1)
        # bmm wants each expert's rows contiguous; the copy is only (K, tokens, r) with r small.
        down = down.view(-1, k, r).transpose(0, 1).contiguous()
        if self.bias_N is None:
            return torch.bmm(down, self.weight_N)
        return torch.baddbmm(self.bias_N.unsqueeze(1), down, self.weight_N)

    def scaled_up(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``s * B`` and ``s * b``: the scale folded into the small up-projection, so the (tokens, d) output needs
        one pass."""
        bias = None if self.bias_B is None else self.bias_B * self.scaling
        return self.weight_B * self.scaling, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (tokens, d) -> every expert's output (K, tokens, d). The dense form; :meth:`mix` is what layers use."""
        mixed = self.middle(x)
        up_weight, up_bias = self.scaled_up()
        if up_bias is None:
            return F.silu(torch.bmm(mixed, up_weight))
        return F.silu(torch.baddbmm(up_bias.unsqueeze(1), mixed, up_weight))

    def mix(self, x: torch.Tensor, gates: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_k g_k E_k(x)``, (tokens, d).

        With ``index`` (the gate values are one-hot: hard training routing or argmax evaluation) only each token's
        selected expert is evaluated forward. In training the straight-through gradient of every gate still needs
        every expert's output, ``dL/dg_k = <dL/dout, E_k(x)>``; :class:`_SelectedExpertMix` recomputes those one
        expert at a time in backward instead of keeping a (K, tokens, d) tensor alive between passes.
        """
        if index is None:
            expert_out = self(x)
            return torch.einsum("nk,knd->nd", gates.to(expert_out.dtype), expert_out)
        inference = not (torch.is_grad_enabled() and (gates.requires_grad or self.weight_A.requires_grad))
        if inference and x.shape[0] <= _GATHER_MAX_TOKENS and not torch.is_autocast_enabled(x.device.type):
            return gates.gather(1, index[:, None]).to(x.dtype) * self.selected_few(x, index)
        middle = self.middle(x)
        up_weight, up_bias = self.scaled_up()
        if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (middle, gates, up_weight, up_bias)
        ):
            return _SelectedExpertMix.apply(middle, gates, up_weight, up_bias, index)
        dtype = _compute_dtype(middle)
        with _autocast_off(middle):
            pre = _selected_preactivation(middle.to(dtype), up_weight.to(dtype), _cast(up_bias, dtype), index)
            return gates.gather(1, index[:, None]).to(dtype) * F.silu(pre)

    def selected_few(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``E_{index_t}(x_t)`` for a handful of tokens (generation), (tokens, d): each token gathers only its own
        expert's three factors, instead of the stacked forms' copies of every expert's weights (``middle``'s
        (d, K*r) layout, the scaled up-projection), which cost more than the arithmetic at one token per step."""
        hidden = torch.bmm(x.unsqueeze(1), self.weight_A[index])  # (tokens, 1, r)
        if self.bias_A is not None:
            hidden = hidden + self.bias_A[index].unsqueeze(1)
        hidden = torch.bmm(hidden, self.weight_N[index])
        if self.bias_N is not None:
            hidden = hidden + self.bias_N[index].unsqueeze(1)
        pre = torch.bmm(hidden, self.weight_B[index]).squeeze(1)
        if self.bias_B is not None:
            pre = pre + self.bias_B[index]
        return F.silu(pre * self.scaling)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, rank={self.rank}, scaling={self.scaling}"


# ------------------------------------------------------------------------------------ sparse (selected) mixing
_GATHER_MAX_TOKENS = 64  # up to this many tokens, gather each token's (r, d) weight; above, group by expert


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


def _autocast_off(t: torch.Tensor) -> torch.autocast:
    return torch.autocast(t.device.type, enabled=False)


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _expert_groups(index: torch.Tensor, num_experts: int) -> list[tuple[int, torch.Tensor]]:
    """(expert, token positions) for every expert that received at least one token."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=num_experts).tolist()
    groups, start = [], 0
    for k, count in enumerate(counts):
        if count:
            groups.append((k, order[start : start + count]))
        start += count
    return groups


def _selected_preactivation(
    middle: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, index: torch.Tensor
) -> torch.Tensor:
    """Each token's ``middle[index_t, t] @ W[index_t] + b[index_t]``, (tokens, d)."""
    tokens = middle.shape[1]
    rows = middle[index, torch.arange(tokens, device=middle.device)]  # (tokens, r)
    if tokens <= _GATHER_MAX_TOKENS:  # generation: a handful of tokens, no host sync
        out = torch.bmm(rows.unsqueeze(1), weight[index]).squeeze(1)
        return out if bias is None else out + bias[index]
    out = rows.new_empty(tokens, weight.shape[-1])
    for k, positions in _expert_groups(index, weight.shape[0]):
        chunk = rows[positions] @ weight[k]
        out[positions] = chunk if bias is None else chunk + bias[k]
    return out


def selected_mix_forward(
    middle: torch.Tensor,
    gates: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    index: torch.Tensor,
) -> tuple[torch.Tensor, tuple]:
    """The forward of :class:`_SelectedExpertMix`: (output, what :func:`selected_mix_backward` needs).

    Shared with the fused gate application in ``layer.py``, which keeps ``pre`` instead of the output."""
    dtype = _compute_dtype(middle)
    dtypes = (middle.dtype, weight.dtype, None if bias is None else bias.dtype)
    with _autocast_off(middle):
        middle, weight, bias = middle.to(dtype), weight.to(dtype), _cast(bias, dtype)
        pre = _selected_preactivation(middle, weight, bias, index)
        out = _selected_output(gates, index, pre)
    return out, (dtypes, middle, gates, weight, bias, index, pre)


def _selected_output(gates: torch.Tensor, index: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    return gates.gather(1, index[:, None]).to(pre.dtype) * F.silu(pre)


def selected_mix_backward(
    grad_out: torch.Tensor, saved: tuple, needs: tuple[bool, bool, bool, bool]
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (middle, gates, weight, bias) given ``saved`` from :func:`selected_mix_forward`."""
    (middle_dtype, weight_dtype, bias_dtype), middle, gates, weight, bias, index, pre = saved
    num_experts, tokens = weight.shape[0], middle.shape[1]
    grad_middle = grad_gates = grad_weight = grad_bias = None
    with _autocast_off(middle):
        grad_out = grad_out.to(pre.dtype)
        if needs[1]:
            # Every expert's output, one at a time, only to dot it with the incoming gradient.
            grad_gates = torch.empty(tokens, num_experts, dtype=gates.dtype, device=gates.device)
            for k in range(num_experts):
                pre_k = middle[k] @ weight[k] if bias is None else torch.addmm(bias[k], middle[k], weight[k])
                grad_gates[:, k] = (grad_out * F.silu(pre_k)).sum(-1).to(gates.dtype)
        if needs[0] or needs[2] or needs[3]:
            sig = torch.sigmoid(pre)
            selected_gate = gates.gather(1, index[:, None]).to(pre.dtype)
            grad_pre = grad_out * selected_gate * (sig * (1 + pre * (1 - sig)))  # d SiLU
            grad_middle = torch.zeros_like(middle)
            grad_weight = torch.zeros_like(weight)
            grad_bias = None if bias is None else torch.zeros_like(bias)
            for k, positions in _expert_groups(index, num_experts):
                g = grad_pre[positions]
                grad_weight[k] = middle[k, positions].T @ g
                grad_middle[k, positions] = g @ weight[k].T
                if grad_bias is not None:
                    grad_bias[k] = g.sum(0)
            grad_middle = grad_middle.to(middle_dtype)
            grad_weight = grad_weight.to(weight_dtype)
            grad_bias = None if grad_bias is None else grad_bias.to(bias_dtype)
    return grad_middle, grad_gates, grad_weight, grad_bias


class _SelectedExpertMix(torch.autograd.Function):
    """``out_t = g[t, index_t] * SiLU(middle[index_t, t] W[index_t] + b[index_t])`` with the gradient of the dense
    ``sum_k g_k SiLU(middle_k W_k + b_k)`` (equal because the non-selected gate values are exactly 0)."""

    @staticmethod
    def forward(ctx, middle, gates, weight, bias, index):  # type: ignore[override]
        out, saved = selected_mix_forward(middle, gates, weight, bias, index)
        ctx.dtypes = saved[0]
        ctx.save_for_backward(*saved[1:])
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = (ctx.dtypes, *ctx.saved_tensors)
        needs = tuple(ctx.needs_input_grad[:4])
        return (*selected_mix_backward(grad_out, saved, needs), None)
