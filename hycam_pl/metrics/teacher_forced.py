"""Teacher-forced loss and perplexity, token-weighted over the whole evaluation set.

The state is the sum of token negative log-likelihoods (nats) and the number of scored tokens,
both float64 and summed across processes, so

    loss = total_nll / total_tokens        ppl = exp(loss)

is exactly the corpus value however the examples were batched or sharded. Averaging per-batch
losses or per-batch perplexities instead would over-weight short batches, and a mean of
exponentials is not the exponential of the mean. float64 keeps the sum exact enough over
millions of tokens (float32 would lose the low digits of a sum of ~1e7 nats).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hycam_pl.metrics._inputs import nan_like
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric


class TeacherForcedLoss(PinnedDtypeMetric):
    """Accumulates (sum of token NLL, token count); ``compute()`` returns ``{"loss", "ppl", "tokens"}``.

    ``"tokens"`` (the synchronised token count) tells "no data" (tokens == 0, loss NaN) apart
    from a diverged model (tokens > 0, loss NaN or inf).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    nll_sum: Tensor
    num_tokens: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_tokens", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor | float, num_tokens: Tensor | float) -> None:
        """Add summed NLL (nats, not a mean) and the number of tokens it covers; any shape, summed.

        Values are detached and moved to the state's device; no host synchronisation happens here.
        """
        self.nll_sum += torch.as_tensor(nll_sum).detach().to(self.nll_sum.device, torch.float64).sum()
        self.num_tokens += (
            torch.as_tensor(num_tokens).detach().to(self.num_tokens.device, torch.float64).sum()
        )

    def compute(self) -> dict[str, Tensor]:
        """Token-weighted mean NLL, its exponential, and the token count; NaN loss/ppl without tokens."""
        if self.num_tokens <= 0:
            nan = nan_like(self.nll_sum)
            return {"loss": nan, "ppl": nan.clone(), "tokens": self.num_tokens.clone()}
        loss = self.nll_sum / self.num_tokens
        return {"loss": loss, "ppl": torch.exp(loss), "tokens": self.num_tokens.clone()}
