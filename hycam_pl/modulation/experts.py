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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (tokens, d) -> expert outputs (K, tokens, d)."""
        k, d, r = self.num_experts, self.hidden_size, self.rank
        down = x @ self.weight_A.permute(1, 0, 2).reshape(
            d, k * r
        )  # (tokens, K*r), one matmul for all experts
        if self.bias_A is not None:
            down = down + self.bias_A.reshape(-1)
        # bmm wants each expert's rows contiguous; the copy is only (K, tokens, r) with r small.
        down = down.view(-1, k, r).transpose(0, 1).contiguous()
        mixed = (
            torch.bmm(down, self.weight_N)
            if self.bias_N is None
            else torch.baddbmm(self.bias_N.unsqueeze(1), down, self.weight_N)
        )
        # s * (mixed B + b) with s folded into the small B and b: one pass over the (K, tokens, d) output.
        up_weight = self.weight_B * self.scaling
        if self.bias_B is None:
            up = torch.bmm(mixed, up_weight)
        else:
            up = torch.baddbmm((self.bias_B * self.scaling).unsqueeze(1), mixed, up_weight)
        return F.silu(up)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, rank={self.rank}, scaling={self.scaling}"
