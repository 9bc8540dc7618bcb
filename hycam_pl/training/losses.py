"""Per-example token NLL, so one forward gives the batch loss and every task's share of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL per example, scored tokens per example) for next-token prediction; -100 labels are ignored."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    tokens = (shifted_labels != IGNORE_INDEX).sum(dim=1)
    return nll.sum(dim=1), tokens


LOSS_REDUCTIONS = ("token", "sequence")


def task_loss_terms(
    nll_sum: torch.Tensor, tokens: torch.Tensor, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss of this micro-batch, count it adds to the normaliser) under ``reduction``.

    ``token``: the sum of every loss token's NLL, counted in tokens; ``sequence``: the sum of each example's
    token-mean NLL, counted in examples (those with at least one loss token). Dividing the sums of a whole
    optimizer step by the step's count gives the objective, however the examples are grouped into
    micro-batches and ranks.
    """
    if reduction == "token":
        return nll_sum.sum(), tokens.sum()
    if reduction == "sequence":
        scored = tokens > 0
        return (nll_sum[scored] / tokens[scored]).sum(), scored.sum()
    raise ValueError(f"loss_reduction={reduction!r} is invalid; allowed: {', '.join(LOSS_REDUCTIONS)}")
