"""The order evaluation walks the tasks in: interleaved, so that a limited evaluation still covers every task.

Why: with the tasks one after another, ``trainer.limit_val_batches`` (or ``limit_test_batches``) keeps the
first tasks only, and ``val/macro/*`` would be the mean over those tasks alone. Here the evaluation order takes
the tasks in turn (round robin: each task's first example, then each task's second, ...; a task whose split is
exhausted drops out), so the first ``k * num_tasks`` examples hold ``k`` of every task, and the limited
evaluation's per-task metrics and their macro mean cover every task that fits. Each task's examples keep their
split order, so a limit keeps the same examples in every run.

Under several processes, rank ``r`` of ``W`` takes every ``W``-th example of that order from position ``r``:
every example exactly once, and the batches the ranks run first are together the head of the order.
:func:`tasks_left_out` tells which tasks a batch limit would still leave without any example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import DistributedSampler


def interleaved_order(sizes: Sequence[int]) -> list[int]:
    """Indices into the concatenation of splits of ``sizes`` (task ``t`` at offset ``sum(sizes[:t])``), taking
    the tasks in turn."""
    offsets = [sum(sizes[:task]) for task in range(len(sizes))]
    return [
        offsets[task] + position
        for position in range(max(sizes, default=0))
        for task in range(len(sizes))
        if position < sizes[task]
    ]


class EvalShardSampler(DistributedSampler):
    """Rank ``r`` of ``W`` gets ``order[r::W]``: every example exactly once.

    Lightning's own distributed sampler pads shards with repeated examples so that every rank has the same
    number of batches, which counts those examples twice in per-task metrics. Being a ``DistributedSampler``,
    this one is left in place by Lightning's sampler injection.
    """

    def __init__(self, order: Sequence[int], num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(len(order)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(order)[rank::num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def limited_batches(num_batches: int, limit: int | float | None) -> int:
    """How many of ``num_batches`` Lightning runs under ``limit_*_batches`` (an int caps, a float is a
    fraction; ``None`` or ``1.0``: all)."""
    if limit is None or isinstance(limit, bool):
        return num_batches
    if isinstance(limit, int):
        return min(num_batches, limit)
    return min(num_batches, int(num_batches * float(limit)))


def tasks_left_out(
    sizes: Sequence[int], batch_size: int, world_size: int, limit: int | float | None
) -> tuple[list[int], int]:
    """The tasks (by id) with examples that no rank evaluates under ``limit``, and the smallest integer
    limit that covers every task with examples."""
    order = interleaved_order(sizes)
    task_of = [task for task, size in enumerate(sizes) for _ in range(size)]
    covered: set[int] = set()
    for rank in range(world_size):
        shard = order[rank::world_size]
        batches = limited_batches(-(-len(shard) // batch_size), limit)
        covered.update(task_of[index] for index in shard[: batches * batch_size])
    wanted = [task for task, size in enumerate(sizes) if size]
    # every task with examples has one among the first len(wanted) of the order; the ranks share them out
    needed = -(-len(wanted) // (world_size * batch_size))
    return [task for task in wanted if task not in covered], needed
