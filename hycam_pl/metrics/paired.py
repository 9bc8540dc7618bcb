"""Paired statistics of two groups of runs evaluated on the same test examples: mean differences with paired
bootstrap confidence intervals, paired tests, Holm's correction and the smallest detectable difference.

Everything random or distributional comes from ``scipy.stats``; this module only says *what* is resampled.

**The data.** A group is one run or several runs of the same configuration over seeds. Per task and metric, a
group's values form a ``(runs, examples)`` array, with the examples in the same order in every run of both
groups (the pairing), and a weight per value: one for scores (a task's score is the mean over its examples),
the example's target token count for the loss (a task's loss is ``sum(loss_sum) / sum(num_tokens)``, exactly
the token-weighted number ``hycam test`` reports). A group's value is the mean of its runs' values.

**The interval** (:func:`paired_difference`) is a bootstrap of ``other - reference`` by
:func:`scipy.stats.bootstrap` (BCa, 95 %) whose *samples are indices*: one sample of example indices per task,
and, for a group with several runs, one sample of run indices per group. scipy resamples every sample
independently (``paired=False`` between samples), and the statistic evaluates both groups on the *same*
resampled example indices, so:

- examples are resampled within each task (a stratified bootstrap: each task keeps its size, and the macro
  average, the mean of the per-task differences, weights tasks as the report does);
- the pairing holds: a resampled example enters both groups' means together, so what varies between examples
  in the same way for both groups (their difficulty) cancels, which is what makes paired comparisons sensitive;
- with several seeds, seeds are resampled too, each group's own runs (seed ``s`` of one method is no closer to
  seed ``s`` of another than to any other seed), then the resampled examples are evaluated in every chosen run.
  Seeds and examples are crossed (every run answers every example), so drawing seeds and drawing examples
  independently is the two-way ("pigeonhole", Owen 2007) bootstrap: the interval covers both seed-to-seed and
  example-to-example variation. With one run per group only examples are resampled (scipy cannot resample a
  set of one: a single run, or a task with a single example, is held fixed; with nothing to resample there is
  no interval).

The bootstrap's standard error gives the smallest detectable difference: ``(z_0.975 + z_0.8) * SE``, the true
difference a two-sided 5 % test would detect with 80 % power at this design's size (examples and seeds) under
a normal approximation. A difference smaller than it is undetectable here, not absent.

**The tests** (:func:`paired_test`) treat each example as the unit, with each group's value on it averaged over
the group's runs: with one run per group and binary values (exact match, a correct answer) the exact McNemar
test, i.e. a two-sided :func:`scipy.stats.binomtest` of the discordant pairs against 1/2 (the sign test on
answers); otherwise the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) of the per-example differences
(per-token losses for the loss). The tests condition on the runs made (the seeds' variation is in the interval,
not in the test). A macro test pools every task's examples. No difference at all (identical runs) gives p = 1.

**Holm** (:func:`holm`): the step-down correction over all the p-values of a report, controlling the chance of
any false rejection among every pair, task and metric compared.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
POWER = 0.8
SEED = 0  # the bootstrap's random generator: a report is reproducible
BATCH = 256  # resamples evaluated at once (memory: BATCH x runs x examples per task)


@dataclass(frozen=True)
class GroupValues:
    """One group's values of one metric on one task: ``values[run, example]`` with ``weights`` of the same
    shape (ones for scores; target token counts for the loss, whose values are then per-token losses)."""

    values: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape != self.weights.shape:
            raise ValueError(
                f"values {self.values.shape} and weights {self.weights.shape} must be (runs, examples)"
            )

    @property
    def runs(self) -> int:
        return self.values.shape[0]

    @property
    def examples(self) -> int:
        return self.values.shape[1]

    def mean(self) -> float:
        """The group's value: per run the weighted mean over examples, then the mean over runs."""
        return float(np.mean(_weighted_means(self.values, self.weights)))

    def per_example(self) -> np.ndarray:
        """Each example's value averaged over the runs (examples with zero weight in every run: NaN)."""
        values = np.where(self.weights > 0, self.values, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN
            return np.nanmean(values, axis=0)


@dataclass(frozen=True)
class Difference:
    difference: float  # other - reference
    ci_low: float
    ci_high: float
    standard_error: float
    detectable: float  # smallest difference detectable at this size (see the module docstring)


def _weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over the last axis; weights summing to zero give NaN."""
    total = weights.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(values) * weights).sum(-1) / total, np.nan)


def paired_difference(
    tasks: Sequence[tuple[GroupValues, GroupValues]],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Difference:
    """``other - reference`` averaged over ``tasks`` (one ``(reference, other)`` per task; one task for a
    per-task difference, all of them for the macro one) with its paired bootstrap interval."""
    if not tasks:
        raise ValueError("no tasks to compare")
    reference_runs, other_runs = tasks[0][0].runs, tasks[0][1].runs
    for reference, other in tasks:
        if reference.examples != other.examples:
            raise ValueError("paired groups must have the same examples")
        if (reference.runs, other.runs) != (reference_runs, other_runs):
            raise ValueError("a group has the same runs on every task")
    # Per run and task, the weighted values and weights: the statistic sums them over resampled examples.
    weighted = [
        (np.nan_to_num(r.values) * r.weights, r.weights, np.nan_to_num(o.values) * o.weights, o.weights)
        for r, o in tasks
    ]
    # The index sets: each group's runs, then each task's examples. One of a single element (one run, a task
    # with one example) is fixed; scipy resamples the others.
    slots = [np.arange(reference_runs), np.arange(other_runs), *(np.arange(r.examples) for r, _ in tasks)]
    resampled = [len(slot) > 1 for slot in slots]
    samples = [slot for slot, free in zip(slots, resampled, strict=True) if free]

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        given = iter(np.asarray(i).astype(np.intp) for i in indices)
        full = [next(given) if free else slot for slot, free in zip(slots, resampled, strict=True)]
        lead = np.broadcast_shapes(*(i.shape[:-1] for i in full))
        size = int(np.prod(lead, dtype=np.int64))
        flat = [np.broadcast_to(i, (*lead, i.shape[-1])).reshape(size, i.shape[-1]) for i in full]
        runs_reference, runs_other, *examples = flat
        differences = [
            _resampled_mean(ov, ow, runs_other, chosen) - _resampled_mean(rv, rw, runs_reference, chosen)
            for (rv, rw, ov, ow), chosen in zip(weighted, examples, strict=True)
        ]
        return np.mean(differences, axis=0).reshape(lead)

    point = float(statistic(*samples))
    if not np.isfinite(point) or not samples:
        nan = float("nan")
        return Difference(point, nan, nan, nan, nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap(
            tuple(samples),
            statistic,
            n_resamples=resamples,
            batch=BATCH,
            vectorized=True,
            paired=False,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    distribution = result.bootstrap_distribution
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.ptp(distribution) == 0:  # every resample gives the same difference (e.g. identical runs)
        low = high = float(distribution[0])
    elif not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. a near-degenerate distribution)
        low, high = (
            float(q) for q in np.percentile(distribution, [50 * (1 - confidence), 50 * (1 + confidence)])
        )
    error = float(result.standard_error)
    detectable = float((stats.norm.ppf(1 - (1 - CONFIDENCE) / 2) + stats.norm.ppf(POWER)) * error)
    return Difference(point, low, high, error, detectable)


def _resampled_mean(
    weighted: np.ndarray, weights: np.ndarray, runs: np.ndarray, examples: np.ndarray
) -> np.ndarray:
    """A group's value for each resample: ``runs`` ``(resamples, r)`` and ``examples`` ``(resamples, n)`` index
    ``weighted``/``weights`` ``(runs, examples)``; per run the weighted mean, then the mean over runs."""
    rows, cols = runs[:, :, None], examples[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_run = weighted[rows, cols].sum(-1) / weights[rows, cols].sum(-1)
    return per_run.mean(-1)


def is_binary(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(np.all((finite == 0) | (finite == 1)))


def paired_test(tasks: Sequence[tuple[GroupValues, GroupValues]]) -> tuple[float, str]:
    """Two-sided p-value and the test's name for ``other`` against ``reference`` on the pooled examples of
    ``tasks`` (see the module docstring): ``"mcnemar"`` for binary answers of single runs, else ``"wilcoxon"``."""
    reference = np.concatenate([r.per_example() for r, _ in tasks])
    other = np.concatenate([o.per_example() for _, o in tasks])
    keep = np.isfinite(reference) & np.isfinite(other)
    reference, other = reference[keep], other[keep]
    single = all(r.runs == 1 and o.runs == 1 for r, o in tasks)
    if single and is_binary(reference) and is_binary(other):
        better = int(np.sum((other == 1) & (reference == 0)))
        worse = int(np.sum((other == 0) & (reference == 1)))
        if better + worse == 0:
            return 1.0, "mcnemar"
        return float(stats.binomtest(better, better + worse, 0.5).pvalue), "mcnemar"
    differences = other - reference
    if not np.any(differences != 0):
        return 1.0, "wilcoxon"
    return float(stats.wilcoxon(differences, zero_method="wilcox").pvalue), "wilcoxon"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
