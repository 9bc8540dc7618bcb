"""MultiTaskBatchSampler: policy proportions, determinism, mid-epoch resume, DDP sharding, Lightning hooks."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from hycam_pl.data import MultiTaskBatchSampler, task_probabilities

SIZES = [800, 200, 50]


def task_of(index: int, sizes=SIZES) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("proportional", np.array(SIZES) / sum(SIZES)),
        ("uniform", np.full(3, 1 / 3)),
        ("temperature", np.sqrt(SIZES) / np.sqrt(SIZES).sum()),
    ],
)
def test_drawn_proportions_match_the_policy(policy, expected):
    sampler = MultiTaskBatchSampler(
        SIZES, batch_size=16, policy=policy, temperature=2.0, num_batches=500, seed=0
    )
    np.testing.assert_allclose(sampler.probabilities, expected, rtol=1e-12)
    counts = np.bincount([task_of(i) for batch in sampler for i in batch], minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)


def test_probabilities_with_an_empty_task():
    np.testing.assert_allclose(task_probabilities([10, 0, 30], "uniform"), [0.5, 0, 0.5])
    np.testing.assert_allclose(task_probabilities([10, 0, 40], "temperature", 2.0), [1 / 3, 0, 2 / 3])
    with pytest.raises(ValueError, match="no task has any training example"):
        task_probabilities([0, 0], "proportional")
    with pytest.raises(ValueError, match="unknown sampling policy 'random'"):
        task_probabilities([1], "random")


def test_each_task_is_a_permutation_until_exhausted():
    sampler = MultiTaskBatchSampler([5, 1000], batch_size=10, policy="uniform", num_batches=20, seed=3)
    small = [i for batch in sampler for i in batch if i < 5]
    assert len(small) > 10
    for start in range(0, len(small) - 4, 5):
        assert sorted(small[start : start + 5]) == [0, 1, 2, 3, 4]  # each pass covers the task once


def test_default_epoch_length_and_determinism():
    sampler = MultiTaskBatchSampler(SIZES, batch_size=8, seed=1)
    assert len(sampler) == sum(SIZES) // 8
    first, again = list(sampler), list(sampler)
    assert first == again and all(len(batch) == 8 for batch in first)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(MultiTaskBatchSampler(SIZES, batch_size=8, seed=2)) != first


def test_resume_mid_epoch_from_state_continues_the_identical_sequence():
    reference = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=30, seed=7)
    reference.set_epoch(2)
    expected = list(reference)
    interrupted = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=30, seed=7)
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator) for _ in range(11)]
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (2, 11)

    resumed = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=30, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what Lightning does after restoring: same epoch keeps the position
    assert seen + list(resumed) == expected
    resumed.set_epoch(3)
    assert len(list(resumed)) == 30  # the next epoch starts at its first batch


def test_only_the_next_iteration_skips_and_abandoned_iterators_do_not_shift_later_ones():
    sampler = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=10, seed=7, start_epoch=0, start_batch=4)
    full = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=10, seed=7)
    expected = list(full)
    abandoned = iter(sampler)  # a DataLoader with workers pre-fetches a few batches, then is dropped
    assert [next(abandoned) for _ in range(2)] == expected[4:6]
    assert list(sampler) == expected  # a fresh iteration of the same epoch starts at its first batch


def test_resume_at_the_end_of_an_epoch_starts_the_next_one():
    sampler = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=5, seed=7, start_epoch=1, start_batch=5)
    assert sampler.position == (2, 0)
    expected = MultiTaskBatchSampler(SIZES, batch_size=4, num_batches=5, seed=7)
    expected.set_epoch(2)
    assert list(sampler) == list(expected)


def test_changed_configuration_warns_on_resume():
    state = MultiTaskBatchSampler(SIZES, batch_size=4, seed=7).state_dict()
    with pytest.warns(UserWarning, match="different batch_size"):
        MultiTaskBatchSampler(SIZES, batch_size=8, seed=7).load_state_dict(state)


def test_ddp_shards_are_disjoint_equal_length_and_form_the_global_batch():
    sizes, world = [300, 100, 60], 4
    shards = [
        list(MultiTaskBatchSampler(sizes, batch_size=5, seed=11, num_replicas=world, rank=r))
        for r in range(world)
    ]
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == sum(sizes) // (5 * world)
    global_order = MultiTaskBatchSampler(sizes, batch_size=5, seed=11, num_replicas=world).global_batches(0)
    for step in range(len(shards[0])):
        assert sum((shards[r][step] for r in range(world)), []) == global_order[step].tolist()
    # within one pass over each task the ranks never share an example
    sampler = MultiTaskBatchSampler(
        [1000, 1000], batch_size=8, seed=5, num_replicas=2, num_batches=20, rank=0
    )
    rank0 = {i for batch in sampler for i in batch}
    rank1 = {
        i
        for batch in MultiTaskBatchSampler(
            [1000, 1000], batch_size=8, seed=5, num_replicas=2, num_batches=20, rank=1
        )
        for i in batch
    }
    assert rank0.isdisjoint(rank1) and len(rank0) == 160


def test_lightning_sets_the_epoch_through_the_sampler_attribute():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = MultiTaskBatchSampler(SIZES, batch_size=4, seed=0)
    loader = DataLoader(list(range(sum(SIZES))), batch_sampler=sampler)
    _set_sampler_epoch(loader, 5)
    assert sampler.epoch == 5


def test_lightning_distributed_injection_keeps_our_sampler_with_rank_info():
    """With Trainer(use_distributed_sampler=True) Lightning re-creates the batch sampler with a DistributedSampler."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler

    dataset = list(range(sum(SIZES)))
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = DataLoader(
            dataset,
            batch_sampler=MultiTaskBatchSampler(SIZES, batch_size=4, seed=0, start_epoch=2, start_batch=3),
        )
    injected = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    updated = _update_dataloader(loader, injected, mode=RunningStage.TRAINING)
    new_sampler = updated.batch_sampler
    assert isinstance(new_sampler, MultiTaskBatchSampler) and new_sampler is not loader.batch_sampler
    assert (new_sampler.num_replicas, new_sampler.rank, new_sampler.position) == (2, 1, (2, 3))
    assert len(updated) == sum(SIZES) // 8


def test_batches_carry_their_optimizer_steps_loss_totals_over_micro_batches_and_ranks():
    """Windows of ``accumulate`` batches (the last one cut at ``epoch_batches``), summed over every rank."""
    from hycam_pl.data.sampler import MultiTaskBatchSampler, SampledBatch

    sizes, tokens = [10, 14], list(range(1, 25))
    tokens[3] = 0  # an example without loss tokens counts towards the tokens but not the examples
    ranks = [
        MultiTaskBatchSampler(
            sizes, 2, seed=5, num_replicas=2, rank=r, example_tokens=tokens, accumulate=2, epoch_batches=5
        )
        for r in range(2)
    ]
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == 6 and all(isinstance(b, SampledBatch) for b in batches[0])
    for window in ([0, 1], [2, 3], [4], [5]):
        examples = [i for b in window for r in range(2) for i in batches[r][b]]
        expected = (sum(tokens[i] for i in examples), sum(tokens[i] > 0 for i in examples))
        assert all(batches[r][b].window == expected for b in window for r in range(2)), window
