"""ROUGE-1, ROUGE-2 and ROUGE-L F-measure as Google's ``rouge_score`` computes them, safe under DDP.

Why ``rouge_score``: papers report it, usually with its Porter stemmer, and ROUGE numbers are only
comparable under the same tokenisation and stemming. Each pair is scored by
``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=...)`` itself.
Its tokeniser lower-cases, replaces every run of characters outside ``[a-z0-9]`` by a space and
splits; with stemming (the default here) words of more than 3 characters go through nltk's Porter
stemmer, which works offline. Punctuation is ignored, and so is every non-ASCII letter (text in
other scripts scores as if empty). ``rougeLsum`` is not computed (its sentence splitter needs
downloaded nltk data).

* **Aggregation** is the mean over examples of each example's F-measure, the number rouge_score
  users report (its ``BootstrapAggregator``'s "mid" is a resampled estimate of this same mean).
* **Not applicable.** ROUGE-n needs reference n-grams (n = 1, 2; ROUGE-L needs one token): when no
  reference has at least n tokens, every prediction scores 0, a perfect one included. That key's
  value is then NaN, reported as "n/a".

Why not torchmetrics' ``ROUGEScore`` class: it keeps one tensor per example in list states with
``dist_reduce_fx=None`` and gathers them one collective per element, so when ranks hold different
numbers of examples (the normal case once a mixed batch is split by task) the ranks fall out of
step (checked with two gloo processes, torchmetrics 1.9). Here the states are the sum of
per-example F-measures, the example count and the count of long-enough references, all summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hycam_pl.metrics._inputs import check_string_pairs, nan_like
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer
    from rouge_score.tokenizers import DefaultTokenizer

ROUGE_KEYS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
ROUGE_MIN_TOKENS: dict[str, int] = {"rouge1": 1, "rouge2": 2, "rougeL": 1}
"""Reference length (rouge_score tokens) below which a reference holds nothing the key can match."""


class RougeF1(PinnedDtypeMetric):
    """Mean per-example ROUGE-1/2/L F-measure; ``compute()`` returns ``{"rouge1", "rouge2", "rougeL"}``.

    Args:
        use_stemmer: apply the Porter stemmer (rouge_score's ``use_stemmer``); default True.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    fmeasure_sum: Tensor
    total: Tensor
    long_references: Tensor

    def __init__(self, use_stemmer: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.use_stemmer = bool(use_stemmer)
        self._scorer: tuple[DefaultTokenizer, RougeScorer] | None = None
        self.add_state(
            "fmeasure_sum", torch.zeros(len(ROUGE_KEYS), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "long_references", torch.zeros(len(ROUGE_KEYS), dtype=torch.long), dist_reduce_fx="sum"
        )

    def _built(self) -> tuple[DefaultTokenizer, RougeScorer]:
        """Built on first use, so runs that never score generations do not import rouge_score and nltk."""
        if self._scorer is None:
            from rouge_score.rouge_scorer import RougeScorer
            from rouge_score.tokenizers import DefaultTokenizer

            tokenizer = DefaultTokenizer(use_stemmer=self.use_stemmer)
            self._scorer = (tokenizer, RougeScorer(list(ROUGE_KEYS), tokenizer=tokenizer))
        return self._scorer

    @property
    def tokenizer(self) -> DefaultTokenizer:
        return self._built()[0]

    @property
    def scorer(self) -> RougeScorer:
        return self._built()[1]

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add one batch of (prediction, single reference) pairs."""
        check_string_pairs(predictions, references)
        fmeasures = [0.0] * len(ROUGE_KEYS)
        long_references = [0] * len(ROUGE_KEYS)
        for prediction, reference in zip(predictions, references):
            scores = self.scorer.score(reference, prediction)  # rouge_score's order: target first
            length = len(self.tokenizer.tokenize(reference))
            for i, key in enumerate(ROUGE_KEYS):
                fmeasures[i] += scores[key].fmeasure
                long_references[i] += int(length >= ROUGE_MIN_TOKENS[key])
        device = self.fmeasure_sum.device
        self.fmeasure_sum += torch.tensor(fmeasures, dtype=torch.float64, device=device)
        self.long_references += torch.tensor(long_references, dtype=torch.long, device=device)
        self.total += len(predictions)

    def compute(self) -> dict[str, Tensor]:
        """Mean F-measure per key; NaN for a key that is not applicable, or when no example was seen."""
        means = self.fmeasure_sum / self.total.double().clamp(min=1)
        return {
            key: means[i] if self.long_references[i] > 0 else nan_like(self.total)
            for i, key in enumerate(ROUGE_KEYS)
        }
