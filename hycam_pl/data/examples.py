"""Map-style torch datasets over the tokenised tasks, yielding the items the collators expect."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from torch.utils.data import Dataset


class TaskExamples(Dataset):
    """The concatenation of the tasks' tokenised splits (task ``t`` at offset ``sum(sizes[:t])``).

    Items: ``{"input_ids", "labels", "task_id"}``, plus ``example_id`` when the parts have that column; this
    index layout is what :class:`MultiTaskBatchSampler` samples from.
    """

    def __init__(self, parts: Sequence[datasets.Dataset]) -> None:
        self.parts = [
            part.select_columns([c for c in ("input_ids", "labels", "example_id") if c in part.column_names])
            for part in parts
        ]
        self.sizes = [len(part) for part in self.parts]
        self.ends = np.cumsum(self.sizes).tolist()

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        task = bisect.bisect_right(self.ends, index)
        start = self.ends[task - 1] if task else 0
        return {**self.parts[task][index - start], "task_id": task}


def prompt_items(
    part: datasets.Dataset, task_name: str, task_id: int, indices: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Generation items of one task's split: the (possibly left-truncated) prompt ids, the texts and the
    example id (None when the split has none)."""
    rows = part if indices is None else part.select(list(indices))
    return [
        {
            "prompt_ids": row["input_ids"][: row["prompt_length"]],
            "prompt": row["prompt"],
            "reference": row["reference"],
            "task": task_name,
            "task_id": task_id,
            "example_id": row.get("example_id"),
        }
        for row in rows
    ]
