"""Stable example ids: what pairs one run's per-example results with another's.

A paired comparison of two runs needs to know that line ``k`` of one run's ``examples.jsonl`` is the same test
example as line ``k`` of the other's, across reruns, checkouts and machines. The id is therefore derived from
the data alone, never from the order examples were loaded or batched in:

* the record's own id, when the task maps one (``fields: {id: <column>}``): a string or an integer, unique
  within the task;
* otherwise ``<task>:<index>:<hash>``: the task name, the record's index in its source (the row of the file,
  the generated record of a synthetic task) and the first 8 hex digits of the SHA-256 of its instruction,
  input and output, so an edited record, or a file whose rows moved, does not silently pair with the old one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from hycam_pl.data.errors import DataError
from hycam_pl.data.records import BadRecord, Record

ID_FIELD = "id"
HASH_DIGITS = 8


def content_hash(record: Record) -> str:
    """The first :data:`HASH_DIGITS` hex digits of the SHA-256 of the record's instruction, input and output."""
    text = json.dumps([record["instruction"], record["input"], record["output"]], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_DIGITS]


def derived_id(task_name: str, index: int, record: Record) -> str:
    """``<task>:<index in the source>:<content hash>`` (for tasks that map no id field)."""
    return f"{task_name}:{index}:{content_hash(record)}"


def own_id(raw: Mapping[str, Any], column: str) -> str:
    """The record's own id from ``column``: a non-empty string or an integer (as its decimal text)."""
    where = "field 'id'" if column == ID_FIELD else f"field 'id' (column '{column}')"
    if column not in raw or raw[column] is None:
        raise BadRecord(f"{where} is missing")
    value = raw[column]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRecord(f"{where} must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise BadRecord(f"{where} is empty")
    return text


def check_unique(ids: Sequence[str], context: str) -> None:
    """Raise :class:`DataError` naming the first repeated id and the two records that carry it."""
    first: dict[str, int] = {}
    for index, value in enumerate(ids):
        if value in first:
            raise DataError(
                f"{context}: id {value!r} is repeated (valid records {first[value]} and {index}); example ids "
                "must be unique within a task, since they pair the per-example results of different runs"
            )
        first[value] = index
