"""Seeded splits: disjoint, sized by the ratios, stable for a seed, and capped by max_examples."""

from __future__ import annotations

from hycam_pl.data import split_records


def test_split_is_disjoint_sized_and_deterministic():
    records = list(range(1000))
    splits = split_records(records, (0.7, 0.2, 0.1), seed=2333)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [700, 200, 100]
    assert sorted(splits["train"] + splits["validation"] + splits["test"]) == records
    assert splits == split_records(records, (0.7, 0.2, 0.1), seed=2333)
    assert splits != split_records(records, (0.7, 0.2, 0.1), seed=1)


def test_ratios_may_leave_a_remainder_and_max_examples_caps_first():
    splits = split_records(list(range(100)), (0.7, 0.2, 0.0), seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [70, 20, 0]
    capped = split_records(list(range(100)), (0.5, 0.5, 0.0), seed=0, max_examples=10)
    assert len(capped["train"]) == len(capped["validation"]) == 5
