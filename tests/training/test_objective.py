"""The training objective does not depend on how an optimizer step's examples are grouped: one batch of 4,
2 micro-batches x accumulation 2, and 2 DDP processes (with and without accumulation) give the same gradient,
for both ``loss_reduction`` settings, with answers of very different lengths. And evaluation under DDP
scores every example exactly once: 2 processes report what 1 process reports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from hycam_pl.data.collate import TrainCollator
from hycam_pl.training.losses import per_example_nll

from .conftest import REPO
from .objective_worker import GLOBAL_BATCH, datamodule, evaluate, first_step, model

REDUCTIONS = ("token", "sequence")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    """Every two-process case, in one launch (Lightning's ``ddp`` strategy re-runs the worker for rank 1)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "tests.training.objective_worker", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def _objective_gradient(
    tmp_path: Path, reduction: str, trained_examples: list[int]
) -> dict[str, torch.Tensor]:
    """The gradient of the objective written out by hand on the step's 4 examples, in one forward."""
    data = datamodule(GLOBAL_BATCH, tmp_path / "cache")
    data.setup("fit")
    loader = data.train_dataloader()
    indices = next(iter(loader.batch_sampler))
    batch = TrainCollator(data.tokenizer.pad_token_id)([loader.dataset[i] for i in indices])
    assert sorted(batch["input_ids"].sum(1).tolist()) == sorted(trained_examples)
    lm = model(reduction)
    nll, tokens = per_example_nll(lm(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    loss = nll.sum() / tokens.sum() if reduction == "token" else (nll / tokens).mean()
    loss.backward()
    return {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys() and expected
    assert any(g.abs().sum() > 0 for g in expected.values()), "zero gradient: the comparison proves nothing"
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-7, msg=f"{what}: {name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_is_the_same_for_one_batch_accumulation_and_ddp(tmp_path, reduction, two_processes):
    one_batch = first_step(tmp_path / "b4", devices=1, accumulate=1, reduction=reduction)
    accumulated = first_step(tmp_path / "b2x2", devices=1, accumulate=2, reduction=reduction)
    (trained,) = one_batch.trained
    assert sorted(sum(accumulated.trained, [])) == sorted(trained)
    _assert_same(
        one_batch.gradient, _objective_gradient(tmp_path, reduction, trained), "batch of 4 vs by hand"
    )
    _assert_same(accumulated.gradient, one_batch.gradient, "2 x accumulation 2 vs batch of 4")
    for accumulate in (1, 2):
        ddp = two_processes[0][f"{reduction}/{accumulate}"]
        seen = sum(ddp["trained"], []) + sum(two_processes[1][f"{reduction}/{accumulate}"]["trained"], [])
        assert sorted(seen) == sorted(trained), "the two ranks did not train on the same global batch"
        _assert_same(
            ddp["gradient"], one_batch.gradient, f"2 processes x accumulation {accumulate} vs 1 process"
        )


def test_two_process_evaluation_scores_every_example_once(tmp_path, two_processes):
    single = evaluate(tmp_path, devices=1)
    assert len(single.scored) % 2 == 1  # an odd count: a padding sampler would repeat one example
    both = two_processes[0]["evaluation"]["scored"] + two_processes[1]["evaluation"]["scored"]
    assert Counter(both) == Counter(single.scored)
    for rank in range(2):
        metrics = two_processes[rank]["evaluation"]["metrics"]
        assert metrics["overall"]["tokens"] == single.metrics["overall"]["tokens"]
        assert metrics["overall"] == pytest.approx(single.metrics["overall"], rel=1e-6)
        assert metrics["tasks"].keys() == single.metrics["tasks"].keys()
        for task, values in single.metrics["tasks"].items():
            assert metrics["tasks"][task] == pytest.approx(values, rel=1e-6), task
