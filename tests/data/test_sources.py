"""Every source type loads, and every kind of bad input fails with a message naming file, record, field."""

from __future__ import annotations

import csv
import json
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hycam_pl.data import DataError, TaskConfig, load_task_records
from tests.data.helpers import AUTO_COT, make_records, requires_auto_cot


def task(path, source="json", **kwargs) -> TaskConfig:
    return TaskConfig(name="t", source=source, path=str(path), **kwargs)


# ----------------------------------------------------------------------------- every source loads
def test_json_list_loads(data_write_json):
    path = data_write_json("d.json", make_records(3))
    loaded = load_task_records(task(path))
    assert loaded.records == [
        {"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(3)
    ]
    assert loaded.skipped == 0 and loaded.origin == str(path)


def test_jsonl_loads_and_ignores_blank_lines(data_write_json):
    text = "\n".join(json.dumps(r) for r in make_records(3)) + "\n\n"
    path = data_write_json("d.jsonl", text)
    assert [r["output"] for r in load_task_records(task(path, "jsonl")).records] == ["1", "2", "3"]


def test_parquet_loads(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(make_records(4)), path)
    assert len(load_task_records(task(path, "parquet")).records) == 4


def test_csv_loads_with_field_mapping(tmp_path):
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerow(["What is 1+1?", "2"])
        writer.writerow(["Say hi, politely", "Hello, there"])
    loaded = load_task_records(task(path, "csv", fields={"instruction": "question", "output": "answer"}))
    assert loaded.records[1] == {"instruction": "Say hi, politely", "input": "", "output": "Hello, there"}


def test_hf_saved_dataset_dir_and_split(tmp_path):
    import datasets

    dataset = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(make_records(3)),
            "other": datasets.Dataset.from_list(make_records(1)),
        }
    )
    dataset.save_to_disk(str(tmp_path / "ds"))
    assert len(load_task_records(task(tmp_path / "ds", "hf")).records) == 3
    assert len(load_task_records(task(tmp_path / "ds", "hf", hf_split="other")).records) == 1
    with pytest.raises(DataError, match=r"no split 'nope'; available splits: train, other"):
        load_task_records(task(tmp_path / "ds", "hf", hf_split="nope"))


def test_hf_local_data_directory(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records(2)))
    assert len(load_task_records(task(tmp_path / "raw", "hf")).records) == 2


def test_hf_unknown_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        load_task_records(task("made-up-org/no-such-dataset-hycam", "hf"))
    assert time.monotonic() - start < 20
    message = str(error.value)
    assert "made-up-org/no-such-dataset-hycam" in message and "offline" in message and "task 't'" in message


def test_hf_unknown_hub_name_fails_fast_when_hub_unreachable(monkeypatch):
    from hycam_pl.data import hub

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(
        DataError, match=r"HF dataset 'made-up-org/nothing-here' split 'train' is not a local directory"
    ):
        load_task_records(task("made-up-org/nothing-here", "hf"))
    assert time.monotonic() - start < 20


def test_synthetic_source():
    loaded = load_task_records(TaskConfig(name="s", source="synthetic", path="qa", num_examples=7))
    assert len(loaded.records) == 7 and loaded.origin == "synthetic:qa"


def test_input_column_optional_unless_mapped(data_write_json):
    path = data_write_json(
        "d.json", [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}]
    )
    assert [r["input"] for r in load_task_records(task(path)).records] == ["", ""]
    with pytest.raises(DataError, match=r"column 'context' \(mapped to field 'input'\) not found"):
        load_task_records(task(path, fields={"input": "context"}))


@requires_auto_cot
def test_auto_cot_loads_as_a_task():
    loaded = load_task_records(TaskConfig(name="auto-cot", source="json", path=str(AUTO_COT)))
    assert len(loaded.records) == 5816 and loaded.skipped == 0
    assert all(r["output"].strip() and r["instruction"].strip() for r in loaded.records)


# ----------------------------------------------------------------------------- bad input: exact messages
def test_json_that_does_not_parse_names_position(data_write_json):
    path = data_write_json(
        "bad.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]'
    )
    with pytest.raises(DataError) as error:
        load_task_records(task(path))
    assert str(error.value) == (
        f"task 't': {path}: invalid JSON at line 3 column 23 (char 63): Expecting ',' delimiter"
    )


def test_json_must_be_a_list(data_write_json):
    path = data_write_json("obj.json", {"instruction": "a", "output": "b"})
    with pytest.raises(
        DataError, match=re.escape(f"task 't': {path}: expected a JSON list of records, got dict")
    ):
        load_task_records(task(path))


def test_jsonl_that_does_not_parse_names_line(data_write_json):
    path = data_write_json("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", \n')
    with pytest.raises(DataError) as error:
        load_task_records(task(path, "jsonl"))
    assert str(error.value) == (
        f"task 't': {path}: line 2: invalid JSON at column 22: Expecting property name enclosed in double quotes"
    )


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"output": "x"}, "field 'instruction' is missing"),
        ({"instruction": "x"}, "field 'output' is missing"),
        ({"instruction": "x", "output": None}, "field 'output' is missing"),
        ({"instruction": "x", "output": 3}, "field 'output' must be a string, got int"),
        ({"instruction": "x", "output": "  "}, "field 'output' is empty"),
        ({"instruction": "", "output": "y"}, "field 'instruction' is empty"),
        ({"instruction": "x", "input": ["a"], "output": "y"}, "field 'input' must be a string, got list"),
        (["x", "y"], "expected an object with 'instruction' and 'output', got list"),
    ],
)
def test_bad_record_names_file_index_and_field(data_write_json, record, problem):
    path = data_write_json("d.json", [*make_records(2), record, *make_records(1)])
    with pytest.raises(DataError) as error:
        load_task_records(task(path))
    assert str(error.value) == f"task 't': {path}: record 2: {problem}"


def test_bad_jsonl_record_names_record_and_line(data_write_json):
    path = data_write_json("d.jsonl", [*make_records(1), {"instruction": "x", "output": ""}])
    with pytest.raises(DataError) as error:
        load_task_records(task(path, "jsonl"))
    assert str(error.value) == f"task 't': {path}: record 1 (line 2): field 'output' is empty"


def test_mapped_column_is_named_in_per_record_errors(data_write_json):
    path = data_write_json("d.json", [{"q": "x", "a": "1"}, {"q": "y", "a": 2}])
    with pytest.raises(DataError) as error:
        load_task_records(task(path, fields={"instruction": "q", "output": "a"}))
    assert (
        str(error.value)
        == f"task 't': {path}: record 1: field 'output' (column 'a') must be a string, got int"
    )


def test_undecodable_bytes_name_byte_offset(data_write_json):
    raw = b'[{"instruction": "caf\xe9", "output": "x"}]'
    path = data_write_json("latin1.json", raw)
    with pytest.raises(DataError) as error:
        load_task_records(task(path))
    assert raw.index(b"\xe9") == 21
    assert (
        str(error.value) == f"task 't': {path}: not valid UTF-8 at byte offset 21 (invalid continuation byte)"
    )


def test_undecodable_jsonl_line_names_line_and_file_offset(data_write_json):
    good = (json.dumps(make_records(1)[0]) + "\n").encode()
    path = data_write_json("d.jsonl", good + b'{"instruction": "\xff", "output": "x"}\n')
    with pytest.raises(DataError) as error:
        load_task_records(task(path, "jsonl"))
    offset = len(good) + len(b'{"instruction": "')
    assert (
        str(error.value)
        == f"task 't': {path}: line 2: not valid UTF-8 at byte offset {offset} (invalid start byte)"
    )


@pytest.mark.parametrize("content", ["[]", ""])
def test_empty_task_is_an_error(data_write_json, content):
    name = "empty.json" if content else "empty.jsonl"
    path = data_write_json(name, content)
    with pytest.raises(DataError, match=re.escape(f"task 't': {path} contains no records")):
        load_task_records(task(path, "json" if content else "jsonl"))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(
        DataError, match=re.escape(f"task 't': json file {tmp_path / 'nope.json'} does not exist")
    ):
        load_task_records(task(tmp_path / "nope.json"))


def test_unknown_field_mapping_lists_available_columns(data_write_json, tmp_path):
    path = data_write_json("d.json", [{"prompt": "x", "completion": "y", "meta": 1}])
    with pytest.raises(DataError) as error:
        load_task_records(task(path, fields={"instruction": "prompt", "output": "answer"}))
    assert str(error.value) == (
        f"task 't': {path}: column 'answer' (mapped to field 'output') not found; "
        "available columns: prompt, completion, meta"
    )
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "x", "response": "y"}]), parquet)
    with pytest.raises(
        DataError,
        match=r"column 'output' \(mapped to field 'output'\) not found; available columns: instruction, response",
    ):
        load_task_records(task(parquet, "parquet"))


def test_skip_counts_bad_records_and_logs(data_write_json, caplog):
    rows = [*make_records(3), {"instruction": "x"}, {"instruction": "y", "output": 5}, *make_records(2, "b")]
    path = data_write_json("d.jsonl", rows)
    with path.open("a") as f:
        f.write("{not json}\n")
    with caplog.at_level("WARNING", logger="hycam_pl.data.sources"):
        loaded = load_task_records(task(path, "jsonl", on_bad_record="skip"))
    assert len(loaded.records) == 5 and loaded.skipped == 3
    assert loaded.skip_reasons[0] == f"task 't': {path}: record 3 (line 4): field 'output' is missing"
    assert loaded.skip_reasons[2].startswith(f"task 't': {path}: record 7 (line 8): invalid JSON")
    assert "skipped 3 bad record(s)" in caplog.text


def test_skip_with_nothing_left_is_an_error(data_write_json):
    path = data_write_json("d.json", [{"instruction": "x"}, {"instruction": "y", "output": ""}])
    with pytest.raises(
        DataError,
        match=r"has no valid records \(2 bad record\(s\) skipped; first: .*record 0: field 'output' is missing",
    ):
        load_task_records(task(path, on_bad_record="skip"))


def test_csv_short_row_is_a_missing_field(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nhello,world\nlonely\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_task_records(task(path, "csv"))
    assert str(error.value) == f"task 't': {path}: record 1 (line 3): field 'output' is missing"


@pytest.mark.parametrize("source", ["json", "jsonl"])
def test_pathologically_nested_json_is_one_data_error(tmp_path, source):
    """Issue 21: a record nested 100k levels deep used to end in a RecursionError traceback."""
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / f"deep.{source}"
    good = json.dumps({"instruction": "Add 1 and 1.", "input": "", "output": "2"})
    path.write_text(f"[{deep}]" if source == "json" else f"{good}\n{deep}\n")
    expected = (
        "JSON nested too deeply to hold records" if source == "json" else "line 2: JSON nested too deeply"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        load_task_records(task(path, source=source))
    if source == "jsonl":  # with on_bad_record: skip it is one skipped record
        loaded = load_task_records(task(path, source=source, on_bad_record="skip"))
        assert len(loaded.records) == 1 and loaded.skipped == 1
