"""Read the prompts of a predict file: JSON list or JSONL of ``{instruction, input?, task?, output?}``.

``task`` (optional) must name a configured task; it selects that task's prompt format and is passed
through to the batch. ``output``, when present, is passed through as the reference. Every problem
raises :class:`DataError` naming the file, the record index and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hycam_pl.data.errors import DataError
from hycam_pl.data.sources import read_table_file


def load_predict_records(path: str | Path, task_names: Sequence[str]) -> list[dict[str, Any]]:
    """Validated records with keys ``instruction``, ``input`` (``""`` if absent), ``task`` and ``output``
    (None if absent)."""
    file = Path(path).expanduser()
    context = "predict_file"
    if not file.is_file():
        raise DataError(f"{context}: {file} does not exist")
    file_format = "jsonl" if file.suffix.lower() == ".jsonl" else "json"
    _, rows = read_table_file(file, file_format, context, skip=False)
    if not rows:
        raise DataError(f"{context}: {file} contains no records")
    records = []
    for location, raw in rows:
        where = f"{context}: {file}: {location}"
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected an object with 'instruction', got {type(raw).__name__}")
        instruction = raw.get("instruction")
        if instruction is None:
            raise DataError(f"{where}: field 'instruction' is missing")
        for field in ("instruction", "input", "task", "output"):
            if raw.get(field) is not None and not isinstance(raw[field], str):
                raise DataError(f"{where}: field '{field}' must be a string, got {type(raw[field]).__name__}")
        if not instruction.strip():
            raise DataError(f"{where}: field 'instruction' is empty")
        task = raw.get("task")
        if task is not None and task not in task_names:
            raise DataError(
                f"{where}: field 'task': unknown task '{task}'; known tasks: {', '.join(task_names)}"
            )
        records.append(
            {
                "instruction": instruction,
                "input": raw.get("input") or "",
                "task": task,
                "output": raw.get("output"),
            }
        )
    return records
