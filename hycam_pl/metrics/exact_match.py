"""Exact match between a generated answer and its reference, after light normalisation.

This is the project's only exact-match definition: the ``exact_match`` column of every results
table and the default task scorer ``exact_match`` (:mod:`hycam_pl.data.scorers`) are this function,
so the two always agree. Definition: equal after stripping both ends and collapsing every inner
whitespace run (spaces, tabs, newlines) to one space; case and punctuation count.

Why normalise at all: generation often differs from the reference only by leading/trailing
whitespace or a doubled space, which says nothing about the answer's quality. Why so little:
case, punctuation and articles can carry meaning (code, numbers, names), so they are kept.
Anything stronger belongs in a task-specific scorer (see :mod:`hycam_pl.metrics.task_score`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from hycam_pl.metrics._inputs import check_string_pairs, nan_like
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric

_WHITESPACE_RUN = re.compile(r"\s+")


def normalize_for_exact_match(text: str) -> str:
    """Strip both ends and collapse every whitespace run (spaces, tabs, newlines) to one space.

    Case and punctuation are preserved. Two empty (or all-whitespace) strings therefore match.
    """
    return _WHITESPACE_RUN.sub(" ", text).strip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised strings are identical, else 0.0 (usable as a task scorer)."""
    return float(normalize_for_exact_match(prediction) == normalize_for_exact_match(reference))


class ExactMatch(PinnedDtypeMetric):
    """Fraction of predictions equal to their reference after :func:`normalize_for_exact_match`.

    State is a match count and an example count, summed across processes, so the value is the
    mean over every example seen on every rank, whatever the batch sizes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    matches: Tensor
    total: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("matches", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add one batch of (prediction, single reference) string pairs."""
        check_string_pairs(predictions, references)
        self.matches += sum(int(exact_match(p, r)) for p, r in zip(predictions, references))
        self.total += len(predictions)

    def compute(self) -> Tensor:
        """Mean exact match; NaN when no example was seen."""
        return self.matches.double() / self.total.double() if self.total > 0 else nan_like(self.matches)
