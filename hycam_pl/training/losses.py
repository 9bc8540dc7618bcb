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
