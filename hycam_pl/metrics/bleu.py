"""Corpus-level BLEU-4 (Papineni et al., 2002) on whitespace tokens, unsmoothed.

Choices, and why:

* **Corpus level.** Clipped n-gram matches, n-gram totals and the two lengths are summed over all
  examples first, and BLEU is computed once from the sums (the states are summed across
  processes too, so the value is the same on one GPU or many). Averaging sentence BLEU instead
  would punish every short answer with zero 4-gram matches.
* **No smoothing** (``smooth=False``). Smoothing exists for sentence BLEU; over a corpus, zero
  4-gram matches only happen for a degenerate model or a tiny eval set, and then 0 is the honest
  answer. torchmetrics' ``smooth=True`` (Lin & Och add-one on n >= 2) would not even rescue that
  case: it still returns 0 when any order has no match, and only inflates the non-zero scores.
* **Tokenisation** is torchmetrics' ``str.split()``: case-sensitive, punctuation stays attached
  ("42." differs from "42"). It is simple and reproducible; for tokenised BLEU comparable to
  published MT numbers use ``torchmetrics.text.SacreBLEUScore`` (also offline) instead.
* One reference per prediction. Scores are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics.text import BLEUScore

from hycam_pl.metrics._inputs import check_string_pairs
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric


class CorpusBLEU4(PinnedDtypeMetric, BLEUScore):
    """torchmetrics ``BLEUScore(n_gram=4, smooth=False)`` taking one reference string per prediction."""

    def __init__(self, **kwargs) -> None:
        super().__init__(n_gram=4, smooth=False, **kwargs)

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:  # type: ignore[override]
        """Add one batch; each reference is wrapped as the single reference of its prediction."""
        check_string_pairs(predictions, references)
        super().update(list(predictions), [[reference] for reference in references])
