"""The Alpaca-style record every source is converted to, and the checks that make it trustworthy.

Why one place: every source (JSON, JSONL, Parquet, CSV, HF, synthetic) must reject the same bad records
with the same wording, so the user can fix a file without learning each reader's quirks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

RECORD_FIELDS = ("instruction", "input", "output")
REQUIRED_FIELDS = ("instruction", "output")


class Record(TypedDict):
    """One example: an instruction, an optional input (``""`` when absent) and the reference output."""

    instruction: str
    input: str
    output: str


class BadRecord(Exception):
    """A single record failed validation; ``reason`` is the message without the task/file prefix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe_field(field: str, column: str) -> str:
    return f"field '{field}'" if field == column else f"field '{field}' (column '{column}')"


def to_record(raw: Any, fields: Mapping[str, str], input_is_optional_column: bool = True) -> Record:
    """Convert one raw row into a :class:`Record`, raising :class:`BadRecord` with a precise reason.

    ``fields`` maps each record field to the source column. ``instruction`` and ``output`` must be
    non-empty strings; ``input`` may be missing or ``None`` (meaning ``""``) but, when present, must be a
    string. ``input_is_optional_column`` is False when the user mapped ``input`` explicitly.
    """
    if not isinstance(raw, Mapping):
        raise BadRecord(f"expected an object with 'instruction' and 'output', got {type(raw).__name__}")
    values: dict[str, str] = {}
    for field in RECORD_FIELDS:
        column = fields[field]
        where = _describe_field(field, column)
        if column not in raw or raw[column] is None:
            if field == "input" and (input_is_optional_column or column in raw):
                values[field] = ""
                continue
            raise BadRecord(f"{where} is missing")
        value = raw[column]
        if not isinstance(value, str):
            raise BadRecord(f"{where} must be a string, got {type(value).__name__}")
        if field in REQUIRED_FIELDS and not value.strip():
            raise BadRecord(f"{where} is empty")
        values[field] = value
    return Record(instruction=values["instruction"], input=values["input"], output=values["output"])
