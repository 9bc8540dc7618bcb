"""ROUGE-1, ROUGE-2 and ROUGE-L F-measure, averaged over examples, safe under DDP.

Scoring is torchmetrics' own (``torchmetrics.functional.text.rouge_score`` with
``use_stemmer=False`` and no ``rougeLsum``, both of which would need nltk and network access).
Its tokenisation, like Google's ``rouge_score`` without stemming: lowercase, replace every run of
characters outside ``[a-z0-9]`` by a space, split on whitespace. Punctuation is ignored, and so
is every non-ASCII letter (text in other scripts scores as if empty).

Why not the ``torchmetrics.text.ROUGEScore`` class: it keeps one tensor per example in list
states with ``dist_reduce_fx=None`` and gathers them one collective per element, so when ranks
hold different numbers of examples (the normal case once a mixed batch is split by task) the
ranks fall out of step: wrong values on one rank and a crash or hang on another (checked with two
gloo processes, torchmetrics 1.9). Here the state is the sum of per-example F-measures and the
example count, both summed across processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.text import rouge_score

from hycam_pl.metrics._inputs import check_string_pairs, nan_like
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric

ROUGE_KEYS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")


class RougeF1(PinnedDtypeMetric):
    """Mean per-example ROUGE-1/2/L F-measure; ``compute()`` returns ``{"rouge1", "rouge2", "rougeL"}``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    fmeasure_sum: Tensor
    total: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "fmeasure_sum", torch.zeros(len(ROUGE_KEYS), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add one batch of (prediction, single reference) pairs."""
        check_string_pairs(predictions, references)
        for prediction, reference in zip(predictions, references):
            scores = rouge_score(prediction, reference, rouge_keys=ROUGE_KEYS, use_stemmer=False)
            per_key = [float(scores[f"{key}_fmeasure"]) for key in ROUGE_KEYS]
            self.fmeasure_sum += torch.tensor(per_key, dtype=torch.float64, device=self.fmeasure_sum.device)
        self.total += len(predictions)

    def compute(self) -> dict[str, Tensor]:
        """Mean F-measure per key; NaN values when no example was seen."""
        if self.total == 0:
            return {key: nan_like(self.total) for key in ROUGE_KEYS}
        means = self.fmeasure_sum / self.total.double()
        return {key: means[i] for i, key in enumerate(ROUGE_KEYS)}
