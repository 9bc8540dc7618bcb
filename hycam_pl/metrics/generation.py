"""The bundle of generation metrics kept for one task: sacreBLEU, ROUGE-1/2/L, exact match, task score."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from hycam_pl.metrics._inputs import check_string_pairs
from hycam_pl.metrics.bleu import SacreBLEU
from hycam_pl.metrics.exact_match import ExactMatch
from hycam_pl.metrics.rouge import RougeF1
from hycam_pl.metrics.task_score import Scorer, TaskScore


class GenerationMetrics(nn.Module):
    """Scores generated answers against references for a single task.

    ``compute()`` returns ``{"sacrebleu", "rouge1", "rouge2", "rougeL", "exact_match"}`` plus
    ``"task_score"`` when a scorer was given, all fractions in [0, 1]. An n-gram metric that is not
    applicable to the task's references (see :mod:`hycam_pl.metrics.bleu` and
    :mod:`hycam_pl.metrics.rouge`) has the value ``None``. ``compute()`` returns ``{}`` when no
    process saw an example (rather than a misleading BLEU of 0).

    Args:
        scorer: the task's own ``scorer(prediction, reference) -> float``, reported as ``"task_score"``.
        rouge_stemmer: ROUGE with the Porter stemmer (rouge_score's ``use_stemmer``).
    """

    def __init__(self, scorer: Scorer | None = None, rouge_stemmer: bool = True) -> None:
        super().__init__()
        self.sacrebleu = SacreBLEU()
        self.rouge = RougeF1(use_stemmer=rouge_stemmer)
        self.exact_match = ExactMatch()
        self.task_score = TaskScore(scorer) if scorer is not None else None

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add one batch of (prediction, single reference) pairs to every metric."""
        check_string_pairs(predictions, references)
        if len(predictions) == 0:
            return
        self.sacrebleu.update(predictions, references)
        self.rouge.update(predictions, references)
        self.exact_match.update(predictions, references)
        if self.task_score is not None:
            self.task_score.update(predictions, references)

    def compute(self) -> dict[str, float | None]:
        """Synchronised values as Python floats (``None``: not applicable).

        Under DDP every rank must run the same collectives in the same order. Exact match is
        computed first on every rank; it is NaN exactly when no rank saw an example, a fact all
        ranks agree on after the sync, so they all skip (or all run) the remaining metrics. Once
        examples exist, sacreBLEU and ROUGE are NaN only when not applicable.
        """
        exact_match = float(self.exact_match.compute())
        if math.isnan(exact_match):
            return {}
        values = {"sacrebleu": _applicable(self.sacrebleu.compute())}
        values.update({key: _applicable(value) for key, value in self.rouge.compute().items()})
        values["exact_match"] = exact_match
        if self.task_score is not None:
            values["task_score"] = float(self.task_score.compute())
        return values

    def reset(self) -> None:
        """Clear every metric's state (call between evaluation epochs)."""
        for metric in (self.sacrebleu, self.rouge, self.exact_match, self.task_score):
            if metric is not None:
                metric.reset()


def _applicable(value) -> float | None:
    """NaN from an n-gram metric over seen examples means "not applicable", reported as None."""
    value = float(value)
    return None if math.isnan(value) else value
