"""A limited validation (``trainer.limit_val_batches``) covers every task: the evaluation order takes the tasks in
turn, so ``val/macro/*`` is the mean over all four tasks; a limit too small to reach every task warns, once,
naming the tasks it leaves out."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from hycam_pl.data import MultiTaskDataModule, TaskConfig
from hycam_pl.data.eval_order import interleaved_order, tasks_left_out
from tests.evaluation.conftest import TASKS, VAL_BATCHES, VAL_EVERY, TinyRun
from tests.evaluation.helpers import read_events, scalar_series


def test_limited_validation_logs_every_task_and_their_macro_mean(tiny_run: TinyRun):
    """The tiny quickstart validates 1 batch of 16 of its 32 validation examples (8 per task). Walking the tasks
    one after the other, that batch would hold arithmetic and code only."""
    assert VAL_BATCHES == 1
    scalars = scalar_series(read_events(tiny_run.fit_dir))
    steps = sorted(scalars["val/macro/loss"])
    assert steps == sorted(scalars["val/loss"]) and len(steps) == 2 and steps[0] == VAL_EVERY - 1
    for step in steps:
        losses = [scalars[f"val/{task}/loss"][step] for task in TASKS]
        assert scalars["val/macro/loss"][step] == pytest.approx(sum(losses) / len(TASKS), rel=1e-6)
        ppls = [scalars[f"val/{task}/ppl"][step] for task in TASKS]
        assert scalars["val/macro/ppl"][step] == pytest.approx(sum(ppls) / len(TASKS), rel=1e-6)


def test_interleaved_order_and_what_a_limit_leaves_out():
    assert interleaved_order([3, 1, 2]) == [0, 3, 4, 1, 5, 2]
    assert tasks_left_out([3, 1, 2], batch_size=2, world_size=1, limit=1) == ([2], 2)
    assert tasks_left_out([3, 1, 2], batch_size=2, world_size=2, limit=1) == ([], 1)  # ranks take turns
    assert tasks_left_out([3, 0, 2], batch_size=1, world_size=1, limit=0.5) == ([], 2)  # a fraction: 2 of 5
    assert tasks_left_out([3, 1, 2], batch_size=1, world_size=1, limit=0.2) == ([1, 2], 3)


def test_a_limit_that_leaves_tasks_out_warns_once_naming_them(tmp_path, caplog: pytest.LogCaptureFixture):
    tasks = [TaskConfig(name=t, source="synthetic", path=t, num_examples=40) for t in TASKS]
    datamodule = MultiTaskDataModule(tasks, batch_size=4, eval_batch_size=2, cache_dir=str(tmp_path))
    datamodule.setup("fit")
    datamodule.trainer = SimpleNamespace(
        limit_val_batches=1, limit_test_batches=1.0, world_size=1, global_rank=0
    )
    with caplog.at_level(logging.WARNING, logger="hycam_pl.data.datamodule"):
        batch = next(iter(datamodule.val_dataloader()))
        datamodule.val_dataloader()  # built again (e.g. reload_dataloaders_every_n_epochs): no second warning
        datamodule.test_dataloader()  # no test limit: nothing to warn about
    assert batch["task_ids"].tolist() == [0, 1]
    (record,) = [r for r in caplog.records if "evaluates no" in r.getMessage()]
    assert record.getMessage() == (
        "trainer.limit_val_batches=1 evaluates no validation example of task(s) 'qa', 'list_ops', so the "
        "validation metrics and their macro mean leave them out; with data.eval_batch_size=2 on 1 process(es), "
        "limit_val_batches >= 2 covers every task"
    )
    caplog.clear()
    datamodule.trainer.limit_val_batches = 2
    datamodule._coverage_warned.clear()
    with caplog.at_level(logging.WARNING, logger="hycam_pl.data.datamodule"):
        covered = [t for b in datamodule.val_dataloader() for t in b["task_ids"].tolist()][:4]
    assert covered == [0, 1, 2, 3] and not caplog.records
