"""Routing diagnostics for mixture-of-experts modulation (pure tensor math, no logging).

Used by monitoring code to spot router collapse (every token to one expert) and to see whether
experts specialise by task. Conventions: the expert axis is the last one; entropies are in nats,
so a uniform choice among ``K`` experts has entropy ``log K`` and a certain choice has 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def router_entropy(probs: Tensor) -> Tensor:
    """Entropy of each token's routing distribution, ``-sum_k p_k log p_k`` (nats); shape ``probs.shape[:-1]``.

    ``0 log 0`` is taken as 0, so one-hot (hard) routing gives exactly 0.
    """
    probs = probs.float()
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def expert_load(gates: Tensor, mask: Tensor | None = None) -> Tensor:
    """Share of routed tokens each expert receives, over every axis except the last; sums to 1.

    Args:
        gates: ``(..., K)`` routing weights per token (one-hot for hard routing, or probabilities).
        mask: optional ``(...)`` boolean/0-1 mask; padding tokens (mask 0) are excluded.

    With ``(B, T, K)`` gates and ``(B, T)`` mask, ``expert_load(gates[b], mask[b])`` is one example's load.
    Returns NaN for every expert when no token is counted.
    """
    gates = gates.float()
    if mask is None:
        mask = torch.ones(gates.shape[:-1], dtype=gates.dtype, device=gates.device)
    if mask.shape != gates.shape[:-1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal gates.shape[:-1] = {tuple(gates.shape[:-1])}"
        )
    weighted = (gates * mask.to(gates.dtype).unsqueeze(-1)).reshape(-1, gates.shape[-1]).sum(dim=0)
    return weighted / weighted.sum()


def load_entropy(load: Tensor, normalized: bool = False) -> Tensor:
    """Entropy (nats) of an expert-load vector, over the last axis; ``normalized`` divides by ``log K``.

    ``load`` may be counts or shares: it is rescaled to sum to 1 first. 0 means all load on one
    expert (collapse); ``log K`` (or 1 when normalised) means perfectly balanced.
    """
    load = load.float()
    entropy = router_entropy(load / load.sum(dim=-1, keepdim=True))
    num_experts = load.shape[-1]
    if normalized:
        return entropy / math.log(num_experts) if num_experts > 1 else torch.zeros_like(entropy)
    return entropy


def usage_matrix(task_ids: Tensor, expert_load_per_example: Tensor, num_tasks: int) -> Tensor:
    """``(num_tasks, K)`` matrix: row ``t`` is the mean expert load over the examples of task ``t``.

    Args:
        task_ids: ``(B,)`` integer task id per example.
        expert_load_per_example: ``(B, K)`` each example's expert load (e.g. from :func:`expert_load`).
        num_tasks: number of rows.

    Rows of tasks with no example in the input are NaN (unknown, not "no load").
    """
    if (
        task_ids.dim() != 1
        or expert_load_per_example.dim() != 2
        or len(task_ids) != len(expert_load_per_example)
    ):
        raise ValueError(
            f"expected task_ids (B,) and expert_load_per_example (B, K); got {tuple(task_ids.shape)} "
            f"and {tuple(expert_load_per_example.shape)}"
        )
    if task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= num_tasks):
        raise IndexError(f"task ids must lie in [0, {num_tasks})")
    load = expert_load_per_example.float()
    task_ids = task_ids.to(device=load.device, dtype=torch.long)
    sums = torch.zeros(num_tasks, load.shape[1], dtype=load.dtype, device=load.device).index_add_(
        0, task_ids, load
    )
    counts = torch.bincount(task_ids, minlength=num_tasks).to(load.dtype).unsqueeze(1)
    return sums / counts


def layer_groups(layers: list[int], max_groups: int = 4) -> list[list[int]]:
    """Split layer indices (in order) into at most ``max_groups`` contiguous groups of near-equal size.

    Why groups: a table with one row per task for each of 32 layers is unreadable; lower, middle and upper
    layers are what people compare. Earlier groups take the extra layer when the split is uneven.
    """
    if max_groups < 1:
        raise ValueError(f"max_groups={max_groups} must be >= 1")
    count = min(max_groups, len(layers))
    size, extra = divmod(len(layers), count) if count else (0, 0)
    groups, start = [], 0
    for g in range(count):
        end = start + size + (1 if g < extra else 0)
        groups.append(list(layers[start:end]))
        start = end
    return groups


def task_expert_nmi(joint: Tensor) -> Tensor:
    """Routing specialisation: the mutual information between task and chosen expert, normalised to [0, 1].

    Args:
        joint: ``(..., T, K)`` how often each task's tokens went to each expert (token counts, or routing
            weights summed over tokens for soft routing); any scale, rescaled to a joint distribution.

    Returns ``(...)``: ``I(task; expert) / min(H(task), H(expert))``. 0 when the expert a token goes to says
    nothing about its task (e.g. every task routes alike); 1 when one determines the other: each task sends all
    its tokens to an expert of its own (with more tasks than experts: each task to one expert; with more experts
    than tasks: no expert shared by two tasks). Why the minimum: it is the largest ``I`` can be, so 1 is
    reachable for any numbers of tasks and experts (dividing by ``H(task)`` would cap the score at
    ``log K / log T`` with fewer experts than tasks); it is what scikit-learn's ``normalized_mutual_info_score``
    computes with ``average_method="min"`` on per-token labels, but for the degenerate cases: a collapsed
    router (``H(expert) = 0``) scores 0; with fewer than two tasks seen (``H(task) = 0``) specialisation by task
    is undefined: NaN. Entropies in nats.
    """
    joint = joint.double()
    total = joint.sum(dim=(-2, -1), keepdim=True)
    p = joint / total.clamp_min(torch.finfo(joint.dtype).tiny)

    def entropy(q: Tensor, dims: tuple[int, ...]) -> Tensor:
        return -torch.special.xlogy(q, q).sum(dim=dims)

    h_task = entropy(p.sum(-1), (-1,))
    h_expert = entropy(p.sum(-2), (-1,))
    mutual = (h_task + h_expert - entropy(p, (-2, -1))).clamp_min(0)
    bound = torch.minimum(h_task, h_expert)
    eps = 1e-12
    nmi = torch.where(bound > eps, mutual / bound.clamp_min(eps), torch.zeros_like(mutual)).clamp(0, 1)
    return torch.where(h_task > eps, nmi, torch.full_like(nmi, math.nan))
