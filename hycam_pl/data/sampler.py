"""Multi-task batch sampling: which task each example comes from, reproducibly and resumably.

For each epoch the sampler draws, for every example slot, a task from ``p_t`` (``proportional``:
``p_t ∝ n_t``; ``uniform``; ``temperature``: ``p_t ∝ n_t^(1/T)``), then takes the next example of that
task from a per-task permutation that is reshuffled when exhausted. The whole epoch is a pure function
of ``(seed, epoch)``, so an epoch can be replayed and resumed at any batch.

Distributed training: all ranks compute the same *global* batches of ``num_replicas * batch_size``
examples and rank ``r`` takes slice ``r``, so ranks see disjoint examples (within a pass over each
task), the same number of batches, and their union is exactly the single-process global batch.

Lightning integration: this is a ``BatchSampler`` subclass with a ``sampler`` argument so that
Lightning's default ``use_distributed_sampler=True`` can re-create it with a ``DistributedSampler``, from
which only ``num_replicas``/``rank`` are read. Lightning calls ``batch_sampler.sampler.set_epoch``; our
``sampler`` attribute forwards that call to :meth:`MultiTaskBatchSampler.set_epoch`.

Loss normalisation: given each example's number of loss tokens and the trainer's gradient accumulation,
every yielded batch is a :class:`SampledBatch` that also carries the totals of its whole optimizer step
(all micro-batches of the accumulation window, all ranks), known before the first backward of the step
because the epoch's global batches are a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler

SAMPLING_POLICIES = ("proportional", "uniform", "temperature")


def task_probabilities(
    task_sizes: Sequence[int], policy: str = "proportional", temperature: float = 2.0
) -> np.ndarray:
    """Probability of drawing each task; tasks without examples get 0."""
    sizes = np.asarray(task_sizes, dtype=np.float64)
    if sizes.ndim != 1 or len(sizes) == 0 or (sizes < 0).any():
        raise ValueError(f"task_sizes must be a non-empty list of counts >= 0, got {list(task_sizes)}")
    if sizes.sum() == 0:
        raise ValueError("no task has any training example")
    if policy == "proportional":
        weights = sizes
    elif policy == "uniform":
        weights = (sizes > 0).astype(np.float64)
    elif policy == "temperature":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        weights = np.where(sizes > 0, sizes ** (1.0 / temperature), 0.0)
    else:
        raise ValueError(
            f"unknown sampling policy {policy!r}; expected one of: {', '.join(SAMPLING_POLICIES)}"
        )
    return weights / weights.sum()


class SampledBatch(list):
    """A list of example indices (or of the examples themselves) plus ``window``: the loss normaliser of
    the optimizer step it belongs to, ``(loss tokens, examples with at least one loss token)`` summed over
    the step's micro-batches on every rank, or ``None`` when unknown."""

    def __init__(self, items: Any = (), window: tuple[int, int] | None = None) -> None:
        super().__init__(items)
        self.window = window


class _EpochRelay:
    """What Lightning finds at ``batch_sampler.sampler``: forwards ``set_epoch`` to the batch sampler."""

    def __init__(self, owner: MultiTaskBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __len__(self) -> int:
        return self._owner.num_examples

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._owner.num_examples))


class MultiTaskBatchSampler(BatchSampler):
    """Yields batches of indices into the concatenation of the tasks' training sets (task 0 first).

    Args:
        task_sizes: number of training examples of each task, in concatenation order.
        batch_size: examples per batch *per rank*.
        policy: ``proportional`` | ``uniform`` | ``temperature``.
        temperature: ``T`` of the ``temperature`` policy.
        num_batches: batches per epoch per rank; default ``sum(task_sizes) // (batch_size * num_replicas)``.
        seed: the order is a function of ``(seed, epoch)`` only.
        num_replicas, rank: distributed sharding (overridden by a ``DistributedSampler`` passed as ``sampler``).
        start_epoch, start_batch: resume position: the first iteration skips ``start_batch`` batches.
        sampler: only for Lightning's sampler injection; its ``num_replicas``/``rank`` are used.
        example_tokens: loss tokens of every example (concatenation order); when given, batches are
            :class:`SampledBatch` objects whose ``window`` holds their optimizer step's totals.
        accumulate: micro-batches per optimizer step (the trainer's ``accumulate_grad_batches``); windows are
            batches ``[k * accumulate, (k + 1) * accumulate)`` of each epoch, as in Lightning.
        epoch_batches: batches per epoch the trainer actually runs (``limit_train_batches``); the last window
            ends there. Default: ``num_batches``.
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        policy: str = "proportional",
        temperature: float = 2.0,
        num_batches: int | None = None,
        seed: int = 2333,
        num_replicas: int = 1,
        rank: int = 0,
        start_epoch: int = 0,
        start_batch: int = 0,
        sampler: Any = None,
        example_tokens: Sequence[int] | None = None,
        accumulate: int = 1,
        epoch_batches: int | None = None,
    ) -> None:
        self.task_sizes = [int(size) for size in task_sizes]
        self.probabilities = tuple(float(p) for p in task_probabilities(self.task_sizes, policy, temperature))
        if isinstance(sampler, DistributedSampler):
            num_replicas, rank = sampler.num_replicas, sampler.rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        super().__init__(range(sum(self.task_sizes)), batch_size, drop_last=True)
        self.sampler = _EpochRelay(self)
        self.policy, self.temperature, self.seed = policy, temperature, int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        default_batches = max(1, self.num_examples // (batch_size * self.num_replicas))
        self.num_batches = int(num_batches) if num_batches is not None else default_batches
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.offsets = np.concatenate([[0], np.cumsum(self.task_sizes)[:-1]]).astype(np.int64)
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.accumulate = int(accumulate)
        self.epoch_batches = min(self.num_batches, int(epoch_batches or self.num_batches))
        self.example_tokens = None
        if example_tokens is not None:
            self.example_tokens = np.asarray(example_tokens, dtype=np.int64)
            if self.example_tokens.shape != (self.num_examples,):
                raise ValueError(
                    f"example_tokens has {len(self.example_tokens)} entries for {self.num_examples} examples"
                )
        self.epoch = 0
        self._skip = 0  # batches the next iteration skips: a restored position, consumed once
        self._position = 0
        self.start_at(start_epoch, start_batch)

    @property
    def num_examples(self) -> int:
        return sum(self.task_sizes)

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, batches of it handed out by the latest iteration, or to be skipped by the next)``.

        Counts what this sampler handed out: a ``DataLoader`` with workers or a prefetching loop asks for
        batches before they are trained on, so for checkpoints prefer the trainer's own batch counter.
        """
        return self.epoch, self._position

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a *different* epoch starts at its first batch (a resume position
        for the same epoch is kept, since Lightning calls this after restoring the checkpoint)."""
        if epoch != self.epoch:
            self.epoch, self._skip, self._position = int(epoch), 0, 0

    def start_at(self, epoch: int, batch: int) -> None:
        """Make the next iteration yield epoch ``epoch`` from batch ``batch`` on (a finished epoch moves on).

        Only the next iteration skips; later iterations of the same epoch start at its first batch, so an
        iterator that is created and abandoned (Lightning does this when it reloads dataloaders) does
        not shift the one that is used.
        """
        if epoch < 0 or batch < 0:
            raise ValueError(f"resume position must be non-negative, got epoch={epoch}, batch={batch}")
        if batch >= self.num_batches:
            epoch, batch = epoch + 1, 0
        self.epoch, self._skip, self._position = int(epoch), int(batch), int(batch)

    def global_batches(self, epoch: int) -> np.ndarray:
        """All ranks' batches of ``epoch``: shape ``(num_batches, num_replicas * batch_size)``."""
        slots = self.num_batches * self.num_replicas * self.batch_size
        rng = np.random.default_rng([self.seed % 2**63, epoch])
        tasks = rng.choice(len(self.task_sizes), size=slots, p=self.probabilities)
        order = np.empty(slots, dtype=np.int64)
        for task, size in enumerate(self.task_sizes):
            where = np.flatnonzero(tasks == task)
            if not len(where):
                continue
            task_rng = np.random.default_rng([self.seed % 2**63, epoch, task + 1])
            passes = -(-len(where) // size)
            stream = np.concatenate([task_rng.permutation(size) for _ in range(passes)])
            order[where] = self.offsets[task] + stream[: len(where)]
        return order.reshape(self.num_batches, self.num_replicas * self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: nothing is computed until the first batch is requested, so set_epoch/start_at
        # called after iter() but before next() (as Lightning does) still take effect.
        epoch, start = self.epoch, self._skip
        self._skip, self._position = 0, start
        columns = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        global_batches = self.global_batches(epoch)
        batches = global_batches[:, columns]
        windows = self.window_totals(global_batches) if self.example_tokens is not None else None
        for index in range(start, self.num_batches):
            self._position = index + 1
            if windows is None:
                yield batches[index].tolist()
            else:
                yield SampledBatch(batches[index].tolist(), windows[index])

    def window_totals(self, global_batches: np.ndarray) -> list[tuple[int, int]]:
        """Per batch of the epoch: (loss tokens, examples with loss tokens) of its accumulation window,
        over all ranks. Batches past ``epoch_batches`` (not trained by the trainer) form their own windows."""
        assert self.example_tokens is not None
        tokens = self.example_tokens[global_batches]
        per_batch = np.stack([tokens.sum(axis=1), (tokens > 0).sum(axis=1)], axis=1)
        totals = per_batch.copy()
        for first in range(0, self.epoch_batches, self.accumulate):
            last = min(first + self.accumulate, self.epoch_batches)
            totals[first:last] = per_batch[first:last].sum(axis=0)
        return [(int(t), int(e)) for t, e in totals]

    def state_dict(self) -> dict[str, Any]:
        """Position and configuration; see :attr:`position` for what the batch count means."""
        epoch, batch = self.position
        return {"epoch": epoch, "batch": batch, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position; warns when the configuration differs (the order will then differ)."""
        changed = [key for key, value in self._config().items() if key in state and state[key] != value]
        if changed:
            warnings.warn(
                f"MultiTaskBatchSampler: resuming with a different {', '.join(changed)}; the remaining batches "
                "will not be the ones the interrupted run would have seen",
                stacklevel=2,
            )
        self.start_at(int(state["epoch"]), int(state["batch"]))

    def _config(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "task_sizes": list(self.task_sizes),
            "batch_size": self.batch_size,
            "num_batches": self.num_batches,
            "num_replicas": self.num_replicas,
            "policy": self.policy,
            "temperature": self.temperature,
        }
