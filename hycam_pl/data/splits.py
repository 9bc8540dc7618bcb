"""Seeded train/validation/test split of a task's records.

Why our own: the split must not depend on the tokenizer, max_length or library versions, so the
evaluation set of a task stays the same across runs and models. It is a numpy permutation seeded by the
task's seed (2333 in the reference), then cut at the cumulative ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def split_indices(
    num_records: int, ratios: Sequence[float], seed: int, max_examples: int | None = None
) -> dict[str, list[int]]:
    """Indices of the train, validation and test records: shuffle, cap at ``max_examples``, cut at ratios."""
    order = np.random.default_rng(seed).permutation(num_records)
    if max_examples is not None:
        order = order[:max_examples]
    total = len(order)
    bounds = [0] + [min(total, round(total * float(np.sum(ratios[: i + 1])))) for i in range(len(ratios))]
    names = ("train", "validation", "test")
    return {name: order[bounds[i] : bounds[i + 1]].tolist() for i, name in enumerate(names)}


def split_records(
    records: Sequence[T], ratios: Sequence[float], seed: int, max_examples: int | None = None
) -> dict[str, list[T]]:
    """The records of each split, in shuffled order (see :func:`split_indices`)."""
    return {
        name: [records[i] for i in indices]
        for name, indices in split_indices(len(records), ratios, seed, max_examples).items()
    }
