"""Batched experts (hycam_pl) vs the reference code's Python loop over experts, forward + backward.

Prints the median time of each and the ratio loop / batched, measured in this one run. Usage:
    python benchmarks/experts.py [--tokens 2048] [--hidden 1024] [--rank 16] [--experts 2 4 8] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from hycam_pl.modulation.experts import StackedExperts


class LoopedExperts(nn.Module):
    """The reference layout: one (A, N, B) triple of nn.Linear per expert, evaluated in a loop and stacked."""

    def __init__(self, hidden: int, experts: int, rank: int, scaling: float) -> None:
        super().__init__()
        self.scaling = scaling
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, rank), nn.Linear(rank, rank), nn.Linear(rank, hidden))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.silu(self.scaling * expert(x)) for expert in self.experts])


def median_seconds(module: nn.Module, x: torch.Tensor, gates: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        out = torch.einsum("nk,knd->nd", gates, module(x))
        out.sum().backward()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
        module.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--experts", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"tokens={args.tokens} hidden={args.hidden} rank={args.rank} threads={torch.get_num_threads()}")
    print(f"{'K':>3} {'looped ms':>10} {'batched ms':>11} {'loop/batched':>13}")
    for k in args.experts:
        x = torch.randn(args.tokens, args.hidden)
        gates = torch.softmax(torch.randn(args.tokens, k), -1)
        batched = StackedExperts(args.hidden, k, args.rank, 2.0, bias=True)
        looped = LoopedExperts(args.hidden, k, args.rank, 2.0)
        for module in (batched, looped):  # non-zero up-projection so the work is real
            for p in module.parameters():
                nn.init.normal_(p, std=0.02)
        t_loop = median_seconds(looped, x, gates, args.repeats)
        t_batched = median_seconds(batched, x, gates, args.repeats)
        print(f"{k:>3} {1e3 * t_loop:>10.2f} {1e3 * t_batched:>11.2f} {t_loop / t_batched:>13.2f}")


if __name__ == "__main__":
    main()
