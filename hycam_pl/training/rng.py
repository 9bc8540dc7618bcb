"""The training random stream (Gumbel noise, dropout), kept independent of evaluation and saved per rank, so an
interrupted and resumed run draws exactly the noise of an uninterrupted one.

Whatever runs between two training batches (validation creating its DataLoader iterator, sampled generation,
callbacks) may draw from the global generators; a run resumed from a checkpoint saved at the end of that batch
would not replay those draws. The state captured at the end of each training batch is restored at the start of
the next, and it is what a checkpoint saved between batches records.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])


class TrainingRandomStream:
    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None  # restored from a checkpoint, applied at the next batch
        self.after_last_batch: dict[str, Any] | None = None
        self.in_batch = False

    def batch_start(self) -> None:
        state, self.pending = self.pending or self.after_last_batch, None
        if state is not None:
            set_rng_state(state)
        self.in_batch = True

    def batch_end(self) -> None:
        self.after_last_batch = rng_state()
        self.in_batch = False

    def states_to_save(self, trainer: Any) -> list[Any]:
        """Every rank's own state (each draws its own noise); gathered, since only rank 0 writes the file.
        Between training batches the stream captured at the end of the last one, during a batch
        (``every_n_train_steps`` saves) the current state."""
        between = not self.in_batch and self.after_last_batch is not None
        state = self.after_last_batch if between else rng_state()
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
            return states
        return [state]

    def restore(self, states: Any, rank: int, world: int) -> None:
        if isinstance(states, list) and len(states) != world:
            log.warning(
                "checkpoint holds random states of %d processes but this run has %d; the Gumbel noise after "
                "resuming will differ from the interrupted run",
                len(states),
                world,
            )
        self.pending = states[rank] if isinstance(states, list) and rank < len(states) else None
