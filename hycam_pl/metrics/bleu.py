"""Corpus BLEU exactly as sacreBLEU computes it by default, summed safely across processes.

Why sacreBLEU: papers report it, and BLEU numbers are only comparable under the same tokenisation
and smoothing. This metric scores every batch with the ``sacrebleu`` package itself (``BLEU()`` at
its defaults: ``13a`` tokenisation, case-sensitive, ``exp`` smoothing, n-gram order 4, no
effective order; signature ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp``) and keeps only the
corpus's sufficient statistics (matched and total n-grams per order, hypothesis and reference
lengths). They are integers summed over batches and processes, and the final score comes from
``sacrebleu.BLEU.compute_bleu`` on the sums, so the value equals ``sacrebleu.corpus_bleu`` on the
whole evaluation set, on one GPU or many, however it was batched.

* **Scale.** A fraction in [0, 1] like every other metric here: sacreBLEU's score divided by 100.
* **Not applicable.** When no reference of the set has :data:`BLEU_ORDER` (4) or more 13a tokens,
  no 4-gram can ever match: a perfect model scores 0 (sacreBLEU gives 0 when the prediction has no
  4-gram), so the number says nothing. ``compute()`` then returns NaN, reported as "n/a".
* One reference per prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hycam_pl.metrics._inputs import check_string_pairs, nan_like
from hycam_pl.metrics._pinned_dtype import PinnedDtypeMetric

if TYPE_CHECKING:
    from sacrebleu.metrics import BLEU

BLEU_ORDER = 4
"""sacreBLEU's default maximum n-gram order; also the reference length below which BLEU is n/a."""


class SacreBLEU(PinnedDtypeMetric):
    """Corpus sacreBLEU (default settings) over (prediction, single reference) pairs, as a fraction.

    ``compute()`` is NaN when no example was seen or when no reference has ``BLEU_ORDER`` tokens.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    ngrams: Tensor
    sys_len: Tensor
    ref_len: Tensor
    long_references: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._bleu: BLEU | None = None
        for name, shape in (("correct", (BLEU_ORDER,)), ("ngrams", (BLEU_ORDER,))):
            self.add_state(name, torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("sys_len", "ref_len", "long_references"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def bleu(self) -> BLEU:
        """sacreBLEU's defaults, nothing overridden; built on first use, so runs that never score generations
        do not import sacrebleu."""
        if self._bleu is None:
            from sacrebleu.metrics import BLEU

            self._bleu = BLEU()
        return self._bleu

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add one batch: its sacreBLEU statistics and how many of its references have 4+ tokens."""
        check_string_pairs(predictions, references)
        if not predictions:
            return
        stats = self.bleu.corpus_score(list(predictions), [list(references)])
        device = self.correct.device
        self.correct += torch.tensor(stats.counts, dtype=torch.long, device=device)
        self.ngrams += torch.tensor(stats.totals, dtype=torch.long, device=device)
        self.sys_len += stats.sys_len
        self.ref_len += stats.ref_len
        self.long_references += sum(reference_tokens(self.bleu, r) >= BLEU_ORDER for r in references)

    def compute(self) -> Tensor:
        """sacreBLEU / 100 from the summed statistics; NaN when not applicable or without examples."""
        if self.long_references == 0:
            return nan_like(self.ref_len)
        score = (
            type(self.bleu)
            .compute_bleu(
                correct=[int(c) for c in self.correct],
                total=[int(t) for t in self.ngrams],
                sys_len=int(self.sys_len),
                ref_len=int(self.ref_len),
                smooth_method=self.bleu.smooth_method,
                smooth_value=self.bleu.smooth_value,
                effective_order=self.bleu.effective_order,
                max_ngram_order=self.bleu.max_ngram_order,
            )
            .score
        )
        return torch.tensor(score / 100.0, dtype=torch.float64, device=self.ref_len.device)


def reference_tokens(bleu: BLEU, reference: str) -> int:
    """Number of tokens sacreBLEU counts in ``reference`` (its own preprocessing and tokeniser)."""
    text = reference.lower() if bleu.lowercase else reference
    return len(bleu.tokenizer(text.rstrip()).split())
