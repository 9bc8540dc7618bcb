"""results.json / results.md contents and atomic writing."""

from __future__ import annotations

import json
import os

import pytest

from hycam_pl.metrics import MACRO, flatten_results, format_results_table, format_value, write_results
from hycam_pl.metrics.results import ROUTING_SECTION

RESULTS = {
    "qa": {"sacrebleu": None, "rouge2": None, "loss": 1.5, "ppl": 4.4816890703},
    "code": {"loss": 2.0, "ppl": 7.38905609893, "sacrebleu": 0.123456, "rouge2": 0.5, "custom": 3},
    MACRO: {"loss": 1.75, "ppl": 5.935372834, "sacrebleu": 0.123456, "rouge2": 0.5, "custom": 3},
}


def test_markdown_table_rows_columns_and_formatting():
    table = format_results_table({MACRO: RESULTS[MACRO], "qa": RESULTS["qa"], "code": RESULTS["code"]})
    lines = table.splitlines()
    assert lines[0] == "| task | loss | ppl | sacrebleu | rouge2 | custom |"  # preferred order, then others
    assert lines[1] == "|:---|---:|---:|---:|---:|---:|"
    assert lines[2] == "| qa | 1.5000 | 4.4817 | n/a | n/a | – |"  # not applicable vs not reported
    assert lines[3] == "| code | 2.0000 | 7.3891 | 0.1235 | 0.5000 | 3 |"
    assert (
        lines[4] == "| **macro** | 1.7500 | 5.9354 | 0.1235 | 0.5000 | 3 |"
    )  # macro last whatever the order
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.5000"),
        (12.34567, "12.3457"),
        (1234.5678, "1234.57"),
        (3.2e7, "3.200e+07"),
        (2e-6, "2.000e-06"),
        (0.0, "0.0000"),
        (7, "7"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (None, "n/a"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_write_results_json_and_markdown(tmp_path):
    results = {**RESULTS, "qa": {**RESULTS["qa"], "rougeL": float("nan")}}
    json_path, md_path = write_results(results, tmp_path / "run")
    assert (json_path.name, md_path.name) == ("results.json", "results.md")
    assert json_path.parent == tmp_path / "run"
    loaded = json.loads(json_path.read_text())
    assert list(loaded) == ["qa", "code", MACRO]
    assert loaded["qa"]["rougeL"] is None  # strict JSON: NaN becomes null
    assert loaded["qa"]["sacrebleu"] is None  # and so does "not applicable"
    assert loaded["code"]["sacrebleu"] == 0.123456 and loaded["code"]["custom"] == 3
    assert md_path.read_text() == format_results_table(results) + "\n"
    assert sorted(os.listdir(tmp_path / "run")) == ["results.json", "results.md"]  # no temp files left


def test_write_results_overwrites_and_failed_write_keeps_old_file(tmp_path, monkeypatch):
    write_results({"qa": {"loss": 1.0}}, tmp_path)
    write_results({"qa": {"loss": 2.0}}, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == {"qa": {"loss": 2.0}}

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_results({"qa": {"loss": 3.0}}, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == {"qa": {"loss": 2.0}}
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


def test_flatten_results():
    results = {"qa": {"loss": 1.0, "sacrebleu": None}, MACRO: {"loss": 1.0, "sacrebleu": None}}
    assert flatten_results(results, prefix="val/") == {  # n/a: nothing to log
        "val/qa/loss": 1.0,
        "val/macro/loss": 1.0,
    }


def test_routing_section_is_kept_in_json_and_shown_below_the_task_table(tmp_path):
    routing = {"task_nmi": 0.25, "task_nmi/layer_0": 0.1, "task_nmi/layer_1": 0.4}
    json_path, md_path = write_results({**RESULTS, ROUTING_SECTION: routing}, tmp_path)
    assert json.loads(json_path.read_text())[ROUTING_SECTION] == routing
    text = md_path.read_text()
    assert text.startswith(format_results_table(RESULTS))  # the task table is unchanged
    assert text.rstrip().endswith("0.2500, mean over layers; per layer 0: 0.1000, 1: 0.4000")
