"""Length grouping sorts runs of global batches by length without changing what an epoch trains on."""

import numpy as np
import pytest

from hycam_pl.data.sampler import MultiTaskBatchSampler

SIZES = [40, 30, 50]


def lengths() -> list[int]:
    rng = np.random.default_rng(0)
    return [
        int(x)
        for x in np.concatenate(
            [rng.integers(5, 20, 40), rng.integers(100, 400, 30), rng.integers(5, 50, 50)]
        )
    ]


def sampler(grouping: int, **kwargs) -> MultiTaskBatchSampler:
    return MultiTaskBatchSampler(
        SIZES, 4, policy="uniform", seed=7, length_grouping=grouping, example_lengths=lengths(), **kwargs
    )


def padded_fraction(batches: list[list[int]]) -> float:
    ls = np.asarray(lengths())
    real = sum(ls[b].sum() for b in batches)
    padded = sum(ls[b].max() * len(b) for b in batches)
    return 1 - real / padded


def test_same_examples_less_padding_and_deterministic():
    plain, grouped = list(sampler(0)), list(sampler(8))
    assert sorted(sum(plain, [])) == sorted(sum(grouped, []))  # the epoch trains on the same examples
    assert padded_fraction(grouped) < 0.5 * padded_fraction(plain)
    assert grouped == list(sampler(8))  # a function of (seed, epoch)
    first = sampler(8)
    first.set_epoch(1)
    assert list(first) != grouped


def test_grouping_resumes_at_a_batch():
    full = list(sampler(8))
    resumed = sampler(8, start_batch=5)
    assert list(resumed) == full[5:]


def test_ranks_split_each_grouped_global_batch():
    """Two ranks' batches of a step, side by side, are the single-process global batch of that step."""
    single = MultiTaskBatchSampler(
        SIZES, 8, policy="uniform", seed=7, length_grouping=8, example_lengths=lengths()
    )
    ranks = [list(sampler(8, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == list(single)


def test_grouping_needs_lengths_and_is_recorded_for_resume():
    with pytest.raises(ValueError, match="length_grouping needs example_lengths"):
        MultiTaskBatchSampler(SIZES, 4, length_grouping=4)
    state = sampler(8).state_dict()
    assert state["length_grouping"] == 8
    with pytest.warns(UserWarning, match="length_grouping"):
        sampler(0).load_state_dict(state)
