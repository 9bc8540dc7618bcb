"""What the data pipeline did to each task: records loaded and skipped, examples per split, truncations.

Why: silent data loss is the usual reason a multi-task run underperforms on one task; the datamodule
logs this table at setup and exposes it as ``datamodule.report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class SplitReport:
    """One split of one task: ``examples`` kept out of ``total``; ``truncated`` ⊆ kept; ``dropped`` = total - kept."""

    total: int = 0
    examples: int = 0
    truncated: int = 0
    dropped: int = 0


@dataclass
class TaskReport:
    """One task: its origin, how many records were valid or skipped, and the per-split counts."""

    name: str
    origin: str
    records: int
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    splits: dict[str, SplitReport] = field(default_factory=dict)

    @property
    def truncated(self) -> int:
        return sum(split.truncated for split in self.splits.values())

    @property
    def dropped(self) -> int:
        return sum(split.dropped for split in self.splits.values())


@dataclass
class DataReport:
    """Per-task reports, in task order; ``str(report)`` is a readable table."""

    tasks: dict[str, TaskReport] = field(default_factory=dict)

    def __getitem__(self, task_name: str) -> TaskReport:
        return self.tasks[task_name]

    def as_dict(self) -> dict[str, dict]:
        """Plain nested dicts (for logging as hyper-parameters or JSON)."""
        return {
            name: {
                "origin": task.origin,
                "records": task.records,
                "skipped": task.skipped,
                "truncated": task.truncated,
                "dropped": task.dropped,
                **{f"{split}_examples": report.examples for split, report in task.splits.items()},
            }
            for name, task in self.tasks.items()
        }

    def __str__(self) -> str:
        header = ("task", "records", "skipped", *SPLIT_NAMES, "truncated", "dropped")
        rows = [header]
        for task in self.tasks.values():
            counts = [task.splits.get(split, SplitReport()).examples for split in SPLIT_NAMES]
            rows.append((task.name, task.records, task.skipped, *counts, task.truncated, task.dropped))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        return "\n".join(
            "  ".join(
                str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            )
            for row in rows
        )
