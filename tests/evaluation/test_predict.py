"""``hycam predict`` on a JSONL file: one record per prompt with task, prompt, response and routing."""

from __future__ import annotations

import json

import pytest

from tests.evaluation.conftest import TinyRun, hycam

PROMPTS = [
    {"instruction": "What is 17 + 25?", "task": "arithmetic"},
    {"instruction": "Reverse the list.", "input": "[3, 1, 2]", "task": "list_ops", "output": "[2, 1, 3]"},
    {"instruction": "Say hello."},  # no task: the first task's prompt format, task null
]


def test_predict_writes_one_record_per_prompt_with_routing(tiny_run: TinyRun, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    output = tmp_path / "out" / "predictions.jsonl"
    result = hycam(
        "predict",
        "-c",
        str(tiny_run.config),
        "--ckpt_path",
        "last",
        "--data.predict_file",
        str(prompts),
        "--model.predict_output",
        str(output),
        cwd=tiny_run.root,
    )
    assert f"Wrote {len(PROMPTS)} predictions to {output}" in result.stdout
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == len(PROMPTS)
    for prompt, record in zip(PROMPTS, records):
        assert set(record) == {"task", "prompt", "response", "routing"}
        assert record["task"] == prompt.get("task")
        assert prompt["instruction"] in record["prompt"] and record["prompt"].rstrip().endswith(
            "### Response:"
        )
        assert prompt.get("input", "") in record["prompt"]
        assert isinstance(record["response"], str)
        load = record["routing"]["expert_load"]
        assert len(load) == tiny_run.num_experts
        assert sum(load) == pytest.approx(1.0, abs=1e-3)
        assert record["routing"]["top_expert"] == max(range(len(load)), key=load.__getitem__)
