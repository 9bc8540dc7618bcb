"""Mean of a task-specific scorer over generated answers.

BLEU and ROUGE reward surface overlap; many tasks have a sharper notion of "right" (the final
number of a chain-of-thought answer, a choice letter). The data package supplies such scorers as
plain callables ``(prediction, reference) -> float``; this metric only averages them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hycam_pl.metrics._inputs import check_string_pairs, nan_like
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric

Scorer = Callable[[str, str], float]
"""``scorer(prediction, reference) -> float``, usually in [0, 1]. Under ``ddp_spawn`` it must
pickle: use a module-level function or a ``functools.partial`` of one, not a lambda."""


class TaskScore(PinnedDtypeMetric):
    """Mean of ``scorer(prediction, reference)`` over all examples (sum and count, summed across ranks)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: Tensor
    total: Tensor

    def __init__(self, scorer: Scorer, **kwargs) -> None:
        super().__init__(**kwargs)
        if not callable(scorer):
            raise TypeError(f"scorer must be callable, got {type(scorer).__name__}")
        self.scorer = scorer
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Score each pair; a non-finite score is an error in the scorer, not a value to average."""
        check_string_pairs(predictions, references)
        batch_sum = 0.0
        for prediction, reference in zip(predictions, references):
            score = float(self.scorer(prediction, reference))
            if not math.isfinite(score):
                raise ValueError(f"scorer returned {score} for prediction {prediction!r}")
            batch_sum += score
        self.score_sum += batch_sum
        self.total += len(predictions)

    def compute(self) -> Tensor:
        """Mean score; NaN when no example was seen."""
        return self.score_sum / self.total.double() if self.total > 0 else nan_like(self.total)
