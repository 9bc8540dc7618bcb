"""TaskConfig validation: every bad field fails at construction, naming the task, the field and the choices."""

from __future__ import annotations

import pytest

from hycam_pl.data import TaskConfig


def test_defaults_mirror_the_reference_setup():
    task = TaskConfig(name="t", source="json", path="x.json")
    assert task.split_ratios == (0.7, 0.2, 0.1) and task.seed == 2333
    assert task.prompt_format == "alpaca" and task.on_bad_record == "error" and task.scorer == "exact_match"
    assert task.column_for == {"instruction": "instruction", "input": "input", "output": "output"}


def test_synthetic_task_defaults_to_its_own_scorer():
    assert TaskConfig(name="a", source="synthetic", path="arithmetic").scorer == "final_number"
    assert TaskConfig(name="c", source="synthetic", path="code").scorer == "whitespace_exact_match"
    assert (
        TaskConfig(name="a", source="synthetic", path="arithmetic", scorer="exact_match").scorer
        == "exact_match"
    )


def test_fields_mapping_is_partial():
    task = TaskConfig(name="t", source="csv", path="x.csv", fields={"output": "answer"})
    assert task.column_for["output"] == "answer" and task.column_for["instruction"] == "instruction"
    assert not task.input_mapped_explicitly


def test_split_ratios_from_yaml_list_become_a_tuple():
    assert TaskConfig(name="t", source="json", path="x", split_ratios=[0.7, 0.2, 0.0]).split_ratios == (
        0.7,
        0.2,
        0.0,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "xml"}, "task 't': source 'xml' is not one of: json, jsonl, parquet, csv, hf, synthetic"),
        (
            {"source": "synthetic", "path": "poetry"},
            "task 't': path synthetic kind 'poetry' is not one of: arithmetic, code, qa, list_ops",
        ),
        ({"path": ""}, "task 't': path must be a non-empty string, got ''"),
        (
            {"fields": {"answer": "a"}},
            "task 't': fields key 'answer' is not one of: instruction, input, output",
        ),
        (
            {"fields": {"output": ""}},
            "task 't': fields column for 'output' must be a non-empty string, got ''",
        ),
        ({"prompt_format": "llama"}, "task 't': prompt_format 'llama' is not one of: alpaca, chat, template"),
        ({"prompt_format": "template"}, "task 't': template must be a string containing '{instruction}'"),
        ({"template": "Q: {instruction}"}, "task 't': template is only used with prompt_format 'template'"),
        ({"split_ratios": (0.7, 0.3)}, "task 't': split_ratios must be three numbers"),
        ({"split_ratios": (0.7, 0.3, 0.1)}, "task 't': split_ratios must sum to a value in (0, 1], got 1.1"),
        ({"split_ratios": (0.7, -0.1, 0.1)}, "task 't': split_ratios must be non-negative numbers"),
        ({"max_examples": 0}, "task 't': max_examples must be a positive integer or null, got 0"),
        ({"num_examples": 0}, "task 't': num_examples must be a positive integer, got 0"),
        (
            {"scorer": "bleu9"},
            "task 't': scorer registered scorer 'bleu9' is not one of: exact_match, final_answer, final_number",
        ),
        ({"on_bad_record": "ignore"}, "task 't': on_bad_record 'ignore' is not one of: error, skip"),
    ],
)
def test_invalid_fields_raise_naming_task_field_and_choices(kwargs, message):
    arguments = {"name": "t", "source": "json", "path": "x.json", **kwargs}
    with pytest.raises(ValueError) as error:
        TaskConfig(**arguments)
    assert str(error.value).startswith(message)


def test_name_is_required():
    with pytest.raises(ValueError, match="task name must be a non-empty string"):
        TaskConfig(name=" ", source="json", path="x")
