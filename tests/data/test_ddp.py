"""Real 2-process DDP on CPU with Lightning's default ``use_distributed_sampler=True``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hycam_pl.data import MultiTaskBatchSampler, TaskExamples
from tests.data.ddp_worker import make_datamodule

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_ranks_train_on_their_own_shard_of_the_multitask_order(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tests.data.ddp_worker", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    datamodule = make_datamodule(str(tmp_path))
    datamodule.setup()
    examples = TaskExamples(datamodule._splits_of("train"))
    for rank, got in enumerate(ranks):
        assert got["sampler"] == ["MultiTaskBatchSampler", 2, rank, 4 * 28 // (2 * 2)]
        sampler = MultiTaskBatchSampler([28] * 4, batch_size=2, seed=2333, num_replicas=2, rank=rank)
        expected = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            expected += [[sum(examples[i]["input_ids"]) for i in batch] for batch in sampler]
        assert got["seen"] == expected  # Lightning's injected DistributedSampler did not re-shard or reorder
    prompts = [set(got["generation_prompts"]) for got in ranks]
    assert prompts[0].isdisjoint(prompts[1]) and len(prompts[0] | prompts[1]) == 12
