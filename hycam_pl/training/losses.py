"""Per-example token NLL, so one forward gives the batch loss and every task's share of it."""

from __future__ import annotations

from typing import Any

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


def step_share(
    batch: dict[str, torch.Tensor],
    nll_sum: torch.Tensor,
    tokens: torch.Tensor,
    reduction: str,
    trainer: Any = None,
) -> torch.Tensor:
    """This micro-batch's summed loss divided by the count of its whole optimizer step, times the
    ``accumulate * world`` (of ``trainer``, or 1 without one) that Lightning (dividing each micro-batch by ``accumulate_grad_batches``) and DDP
    (averaging over ranks) divide by: the step's gradient is then exactly that of the objective over all its
    examples, however they are split into micro-batches and ranks.

    The step's count comes with the batch (``loss_tokens``/``loss_examples``, from the datamodule's sampler,
    which knows every rank's micro-batches in advance). Without it, a step of one micro-batch per rank still
    works (the count is summed over ranks here); accumulation needs it.
    """
    total, count = task_loss_terms(nll_sum, tokens, reduction)
    accumulate, world = (
        (int(trainer.accumulate_grad_batches), int(trainer.world_size)) if trainer is not None else (1, 1)
    )
    key = "loss_tokens" if reduction == "token" else "loss_examples"
    if key in batch:
        count = batch[key]
    elif accumulate > 1:
        raise ValueError(
            "gradient accumulation needs the token counts of each optimizer step, which batches from "
            "MultiTaskDataModule carry (loss_tokens/loss_examples); these batches have none"
        )
    elif world > 1 and torch.distributed.is_initialized():
        count = count.detach().clone()
        torch.distributed.all_reduce(count)
    return total * (accumulate * world / count.clamp_min(1).to(total.dtype))
