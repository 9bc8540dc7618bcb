"""Stable example ids: the record's own id when the task maps one, else ``<task>:<index>:<hash>``; carried from
the records through tokenisation (and its cache) to every batch."""

from __future__ import annotations

import pytest

from hycam_pl.data import DataError, MultiTaskDataModule, TaskConfig, load_task_records
from hycam_pl.data.example_ids import content_hash
from tests.data.helpers import make_records


def _ids_in_batches(loader) -> list[str]:
    return [example_id for batch in loader for example_id in batch["example_ids"]]


def test_derived_ids_name_the_task_the_source_index_and_the_content(data_write_json):
    records = make_records(6)
    records[2] = {"instruction": 7}  # a bad record: skipped, and the others keep their own source index
    path = data_write_json("t.json", records)
    loaded = load_task_records(TaskConfig(name="t", source="json", path=str(path), on_bad_record="skip"))
    kept = [0, 1, 3, 4, 5]
    assert loaded.ids == [f"t:{i}:{content_hash(r)}" for i, r in zip(kept, loaded.records, strict=True)]
    assert len(content_hash(loaded.records[0])) == 8

    edited = make_records(6)
    edited[2] = {"instruction": 7}
    edited[4]["output"] = "changed"  # an edited record gets a new id; nothing else moves
    again = load_task_records(
        TaskConfig(name="t", source="json", path=str(data_write_json("t.json", edited)), on_bad_record="skip")
    )
    changed = [k for k, (a, b) in enumerate(zip(loaded.ids, again.ids, strict=True)) if a != b]
    assert changed == [3] and again.ids[3].startswith("t:4:")


def test_own_ids_from_a_mapped_field_reach_eval_and_generation_batches(tmp_path, data_write_json):
    rows = [{**record, "uid": f"q-{i}" if i % 2 else i} for i, record in enumerate(make_records(40))]
    path = data_write_json("own.jsonl", rows)
    task = TaskConfig(name="own", source="jsonl", path=str(path), fields={"id": "uid"})
    assert load_task_records(task).ids[:3] == ["0", "q-1", "2"]

    datamodule = MultiTaskDataModule(
        [task], batch_size=4, eval_batch_size=3, cache_dir=str(tmp_path / "cache")
    )
    datamodule.setup("fit")
    valid = {"0" if i == 0 else (f"q-{i}" if i % 2 else str(i)) for i in range(40)}
    test_ids = _ids_in_batches(datamodule.test_dataloader())
    generated = _ids_in_batches(datamodule.generation_dataloader("test"))
    assert len(test_ids) == 4 and set(test_ids) <= valid and sorted(generated) == sorted(test_ids)
    prompts = {
        p: r
        for b in datamodule.generation_dataloader("test")
        for p, r in zip(b["example_ids"], b["references"])
    }
    assert all(
        prompts[i] == str(int(i.removeprefix("q-")) + 1) for i in generated
    )  # the id goes with its record

    cached = MultiTaskDataModule([task], batch_size=4, eval_batch_size=3, cache_dir=str(tmp_path / "cache"))
    cached.setup("fit")  # tokenised splits now come from the cache; the ids do not depend on it
    assert _ids_in_batches(cached.test_dataloader()) == test_ids
    train_ids = _ids_in_batches(cached.train_dataloader())
    assert set(train_ids) <= valid and not set(train_ids) & set(test_ids)


@pytest.mark.parametrize(
    ("uids", "message"),
    [
        (
            ["a", "b", "a"],
            r"task 'own': .*own.json: field 'id' \(column 'uid'\): id 'a' is repeated \(valid records 0 and 2\)",
        ),
        (["a", None, "c"], r"task 'own': .*own.json: record 1: field 'id' \(column 'uid'\) is missing"),
        (["a", True, "c"], r"record 1: field 'id' \(column 'uid'\) must be a string or an integer, got bool"),
        (["a", " ", "c"], r"record 1: field 'id' \(column 'uid'\) is empty"),
    ],
)
def test_bad_own_ids_are_refused_naming_the_record_and_field(data_write_json, uids, message):
    rows = [{**record, "uid": uid} for record, uid in zip(make_records(3), uids, strict=True)]
    task = TaskConfig(
        name="own", source="json", path=str(data_write_json("own.json", rows)), fields={"id": "uid"}
    )
    with pytest.raises(DataError, match=message):
        load_task_records(task)


def test_an_unmapped_id_column_is_refused_when_mapped_explicitly(data_write_json):
    path = data_write_json("t.json", make_records(3))
    with pytest.raises(DataError, match=r"column 'uid' \(mapped to field 'id'\) not found"):
        load_task_records(TaskConfig(name="t", source="json", path=str(path), fields={"id": "uid"}))
