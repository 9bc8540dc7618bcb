"""``hycam test`` on two DDP processes (CPU, gloo) writes every test example to ``examples.jsonl`` exactly once,
although the 15 test examples and the 11 generation prompts do not split evenly over the ranks (Lightning's own
distributed sampler would repeat examples to pad the shards), and the per-example losses add up to the per-task
losses that the ranks' synchronised metrics wrote to ``results.json``."""

from __future__ import annotations

import json

import pytest
import yaml

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.metrics import read_examples
from tests.training.conftest import run_cli, tiny_quickstart


@pytest.mark.slow
def test_two_ranks_write_every_example_once(tmp_path):
    config = tiny_quickstart(tmp_path)
    loaded = yaml.safe_load(config.read_text())
    data = loaded["data"]
    data.update(eval_batch_size=3, generation_samples_per_task=3)
    data["tasks"][0]["num_examples"] = 50  # 5 test examples; the next task 2, the others 4: 15 in all
    data["tasks"][1]["num_examples"] = 20  # 3 generated per task, 2 of this one: 11 prompts
    config.write_text(yaml.safe_dump(loaded, sort_keys=False))
    # the initial model (no checkpoint): nothing to train for this
    run_cli("test", "-c", str(config), "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path)
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    rows = read_examples(run_dir / "examples.jsonl")
    results = json.loads((run_dir / "results.json").read_text())

    datamodule = MultiTaskDataModule(**{**data, "cache_dir": None})
    datamodule.setup("test")
    names = datamodule.task_names
    expected = [
        (names[task], example_id)
        for batch in datamodule.test_dataloader()
        for task, example_id in zip(batch["task_ids"].tolist(), batch["example_ids"], strict=True)
    ]
    assert len(expected) == 15
    assert sorted((r["task"], r["id"]) for r in rows) == sorted(expected)  # each once, none missing
    generated = [
        (b["tasks"], b["example_ids"]) for b in datamodule.generation_dataloader("test", shard=False)
    ]
    assert sorted((r["task"], r["id"]) for r in rows if "prediction" in r) == sorted(
        pair for tasks, ids in generated for pair in zip(tasks, ids, strict=True)
    )
    assert sum("prediction" in r for r in rows) == 11
    for task in names:
        mine = [r for r in rows if r["task"] == task]
        loss = sum(r["loss_sum"] for r in mine) / sum(r["num_tokens"] for r in mine)
        assert loss == pytest.approx(results[task]["loss"], rel=1e-6), task
        mean = sum(r["exact_match"] for r in mine if "prediction" in r) / sum("prediction" in r for r in mine)
        assert mean == pytest.approx(results[task]["exact_match"], abs=1e-9), task
