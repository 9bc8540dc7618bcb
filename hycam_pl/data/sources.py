"""Read a task's records from its source and validate every one of them.

Why strict: a silently mangled record (missing output, wrong column, bad bytes) corrupts training in a
way no metric will reveal. Every problem is reported with the task, the file, the record index and the
field; ``on_bad_record: skip`` turns record-level problems into counted, logged skips instead.
File-level problems (unparseable JSON, undecodable bytes, unknown columns, no records) always raise.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hycam_pl.data.errors import DataError
from hycam_pl.data.example_ids import ID_FIELD, check_unique, derived_id, own_id
from hycam_pl.data.hub import hub_offline, offline_lookups
from hycam_pl.data.records import REQUIRED_FIELDS, BadRecord, Record, to_record
from hycam_pl.data.synthetic import generate_synthetic
from hycam_pl.data.task import TaskConfig

log = logging.getLogger(__name__)

MAX_REASONS_KEPT = 5

# A raw row with where it came from ("record 3" or "record 3 (line 4)"); the row may already be a
# BadRecord when it could not even be parsed (a JSONL line).
Located = tuple[str, Any]


@dataclass
class LoadedRecords:
    """The valid records of one task, their stable example ids (``ids[i]`` is ``records[i]``'s, see
    :mod:`hycam_pl.data.example_ids`), and what was skipped on the way."""

    records: list[Record]
    origin: str
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


def load_task_records(task: TaskConfig) -> LoadedRecords:
    """Read and validate all records of ``task``; raises :class:`DataError` on anything unusable."""
    if task.source == "synthetic":
        origin = f"synthetic:{task.path}"
        records = generate_synthetic(task.path, task.num_examples, task.seed)
        rows: list[Located] = [(f"record {i}", dict(r)) for i, r in enumerate(records)]
        columns: Sequence[str] = ("instruction", "input", "output")
    elif task.source == "hf":
        origin, columns, rows = _read_hf(task)
    else:
        path = Path(task.path).expanduser()
        origin = str(path)
        if not path.is_file():
            raise DataError(f"task '{task.name}': {task.source} file {origin} does not exist")
        columns, rows = read_table_file(
            path, task.source, f"task '{task.name}'", task.on_bad_record == "skip"
        )
    if not rows:
        raise DataError(f"task '{task.name}': {origin} contains no records")
    _check_columns(task, origin, columns)
    return _validate(task, origin, rows)


def _check_columns(task: TaskConfig, origin: str, columns: Sequence[str]) -> None:
    mapped = list(REQUIRED_FIELDS) + (["input"] if task.input_mapped_explicitly else [])
    id_column = (task.fields or {}).get(ID_FIELD)
    for record_field in mapped + ([ID_FIELD] if id_column else []):
        column = id_column if record_field == ID_FIELD else task.column_for[record_field]
        if column not in columns:
            raise DataError(
                f"task '{task.name}': {origin}: column '{column}' (mapped to field '{record_field}') not found; "
                f"available columns: {', '.join(columns) or '(none)'}"
            )


def _validate(task: TaskConfig, origin: str, rows: Iterable[Located]) -> LoadedRecords:
    loaded = LoadedRecords(records=[], origin=origin)
    fields, input_optional = task.column_for, not task.input_mapped_explicitly
    id_column = (task.fields or {}).get(ID_FIELD)
    for index, (location, raw) in enumerate(rows):
        try:
            if isinstance(raw, BadRecord):
                raise raw
            record = to_record(raw, fields, input_optional)
            example_id = own_id(raw, id_column) if id_column else derived_id(task.name, index, record)
            loaded.records.append(record)
            loaded.ids.append(example_id)
        except BadRecord as bad:
            message = f"task '{task.name}': {origin}: {location}: {bad.reason}"
            if task.on_bad_record == "error":
                raise DataError(message) from None
            loaded.skipped += 1
            if len(loaded.skip_reasons) < MAX_REASONS_KEPT:
                loaded.skip_reasons.append(message)
    if loaded.skipped:
        log.warning(
            "task '%s': skipped %d bad record(s) of %s (first: %s)",
            task.name,
            loaded.skipped,
            origin,
            loaded.skip_reasons[0],
        )
    if id_column:
        check_unique(loaded.ids, f"task '{task.name}': {origin}: field 'id' (column '{id_column}')")
    if not loaded.records:
        raise DataError(
            f"task '{task.name}': {origin} has no valid records ({loaded.skipped} bad record(s) skipped; "
            f"first: {loaded.skip_reasons[0] if loaded.skip_reasons else 'none'})"
        )
    return loaded


def _utf8(data: bytes, base_offset: int = 0) -> str:
    """Decode UTF-8 (a leading BOM is allowed); a bad byte raises BadRecord naming its byte offset."""
    skip = len(codecs.BOM_UTF8) if base_offset == 0 and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRecord(
            f"not valid UTF-8 at byte offset {base_offset + skip + error.start} ({error.reason})"
        ) from None


def _decode_file(data: bytes, context: str, origin: str) -> str:
    try:
        return _utf8(data)
    except BadRecord as bad:
        raise DataError(f"{context}: {origin}: {bad.reason}") from None


def _union_of_keys(rows: Iterable[Located]) -> list[str]:
    keys: dict[str, None] = {}
    for _, raw in rows:
        if isinstance(raw, dict):
            keys.update(dict.fromkeys(raw))
    return list(keys)


def read_table_file(
    path: Path, file_format: str, context: str, skip: bool
) -> tuple[list[str], list[Located]]:
    """Columns and located raw rows of a ``json``/``jsonl``/``parquet``/``csv`` file.

    ``context`` starts every error message (e.g. ``"task 'qa'"``); with ``skip`` a JSONL line that does
    not decode or parse becomes a :class:`BadRecord` row instead of an error.
    """
    readers = {"json": _read_json, "jsonl": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv}
    return readers[file_format](path, context, skip)


def _read_json(path: Path, context: str, skip: bool) -> tuple[list[str], list[Located]]:
    origin = str(path)
    text = _decode_file(path.read_bytes(), context, origin)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{context}: {origin}: invalid JSON at line {error.lineno} column {error.colno} "
            f"(char {error.pos}): {error.msg}"
        ) from None
    except RecursionError:
        raise DataError(f"{context}: {origin}: JSON nested too deeply to hold records") from None
    if not isinstance(data, list):
        raise DataError(f"{context}: {origin}: expected a JSON list of records, got {type(data).__name__}")
    rows = [(f"record {i}", raw) for i, raw in enumerate(data)]
    return _union_of_keys(rows), rows


def _read_jsonl(path: Path, context: str, skip: bool) -> tuple[list[str], list[Located]]:
    """One record per non-blank line; a line that does not decode or parse is a bad record of its own."""
    origin = str(path)
    rows: list[Located] = []
    offset = 0
    for line_number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        line_offset, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        location = f"record {len(rows)} (line {line_number})"
        try:
            try:
                rows.append((location, json.loads(_utf8(line, base_offset=line_offset))))
            except json.JSONDecodeError as error:
                raise BadRecord(f"invalid JSON at column {error.colno}: {error.msg}") from None
            except RecursionError:
                raise BadRecord("JSON nested too deeply to be a record") from None
        except BadRecord as bad:
            if not skip:
                raise DataError(f"{context}: {origin}: line {line_number}: {bad.reason}") from None
            rows.append((location, bad))
    return _union_of_keys(rows), rows


def _read_parquet(path: Path, context: str, skip: bool) -> tuple[list[str], list[Located]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{context}: {path}: not a readable Parquet file ({error})") from None
    rows = [(f"record {i}", raw) for i, raw in enumerate(table.to_pylist())]
    return list(table.column_names), rows


def _read_csv(path: Path, context: str, skip: bool) -> tuple[list[str], list[Located]]:
    """CSV with a header row; every cell is a string, a short row's missing cells are missing fields."""
    origin = str(path)
    reader = csv.DictReader(io.StringIO(_decode_file(path.read_bytes(), context, origin), newline=""))
    rows: list[Located] = []
    try:
        for raw in reader:
            rows.append((f"record {len(rows)} (line {reader.line_num})", raw))
    except csv.Error as error:
        raise DataError(f"{context}: {origin}: line {reader.line_num}: invalid CSV ({error})") from None
    return list(reader.fieldnames or []), rows


def _read_hf(task: TaskConfig) -> tuple[str, list[str], list[Located]]:
    """A ``datasets`` dataset: a ``save_to_disk`` directory, a local data directory, or a (cached) Hub name."""
    import datasets

    origin = f"HF dataset '{task.path}'" + (f" (config '{task.hf_config}')" if task.hf_config else "")
    origin += f" split '{task.hf_split}'"
    path = Path(task.path).expanduser()
    saved_markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    try:
        if path.is_dir() and any((path / marker).exists() for marker in saved_markers):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if task.hf_split not in dataset:
                    raise DataError(
                        f"task '{task.name}': {origin}: no split '{task.hf_split}'; "
                        f"available splits: {', '.join(dataset)}"
                    )
                dataset = dataset[task.hf_split]
        elif path.exists() or not hub_offline():
            dataset = datasets.load_dataset(task.path, task.hf_config, split=task.hf_split)
        else:
            with offline_lookups():
                try:
                    dataset = datasets.load_dataset(task.path, task.hf_config, split=task.hf_split)
                except (ConnectionError, FileNotFoundError) as error:
                    raise DataError(
                        f"task '{task.name}': {origin} is not a local directory and is not in the datasets "
                        "cache, and the Hub is offline (HF_HUB_OFFLINE is set or the Hub is unreachable); "
                        f"download it on a machine with network access or point path at a local copy ({error})"
                    ) from None
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"task '{task.name}': {origin} could not be loaded: {error}") from None
    rows = [(f"record {i}", raw) for i, raw in enumerate(dataset.to_list())]
    return origin, list(dataset.column_names), rows
