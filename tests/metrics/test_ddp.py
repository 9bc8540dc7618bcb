"""TaskMetrics under real DDP (two CPU/gloo processes): synced values equal the single-process values.

The data are deliberately uneven: tasks have different example counts on each rank and one task
appears on one rank only, which is where list-state metrics (torchmetrics' ROUGEScore) fall out
of step across ranks. The "text" task is the fixed parity set, split unevenly over the ranks: its
synced sacreBLEU/ROUGE still equal the sacrebleu/rouge_score packages on the whole set. The "short"
task (one-word answers, on one rank only) has BLEU and ROUGE-2 not applicable on every rank.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import socket
import sys

import pytest
import torch

from hycam_pl.metrics import MACRO, TaskMetrics, exact_match
from tests.metrics.test_text_metrics import published_bleu, published_rouge
from tests.metrics.text_cases import CASES

TASKS = ["qa", "code", "math", "text", "short"]
WORLD_SIZE = 2
# Per rank: (task id, nll sum, tokens, prediction, reference).
SHARDS = [
    [
        (0, 7.0, 4, "the cat sat on the mat", "the cat sat on a mat"),
        (0, 3.5, 2, "a dog ran in the park today", "the dog ran in the park"),
        (0, 1.0, 5, "hello world", "hello world"),
        (1, 9.0, 3, "print ( x )", "print ( y )"),
    ],
    [
        (0, 2.0, 1, "Paris is the capital of France", "The capital of France is Paris"),
        (2, 4.0, 8, "the answer is 12", "the answer is 12"),
        (2, 6.0, 2, "so 7", "it is 8"),
        (4, 1.0, 1, "Oslo", "Oslo"),
        (4, 1.0, 1, "Bergen", "Oslo"),
    ],
]
SPLIT = 11  # "text": the first 11 parity pairs on rank 0, the other ones on rank 1
SHARDS[0] += [(3, 1.0, 2, prediction, reference) for prediction, reference in CASES[:SPLIT]]
SHARDS[1] += [(3, 1.0, 2, prediction, reference) for prediction, reference in CASES[SPLIT:]]


def _feed(metrics: TaskMetrics, rows) -> None:
    if not rows:
        return
    ids, nll, tokens, predictions, references = zip(*rows)
    metrics.update_loss(torch.tensor(ids), torch.tensor(nll), torch.tensor(tokens))
    metrics.update_generation_by_id(list(ids), list(predictions), list(references))


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60)
    )
    try:
        metrics = TaskMetrics(TASKS, scorers={"math": exact_match})
        _feed(metrics, SHARDS[rank])
        first = metrics.compute()
        second = metrics.compute()  # computing twice must not double-count synced states
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"first": first, "second": second}, handle)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.skipif(sys.platform == "win32", reason="gloo on Windows not exercised")
def test_task_metrics_sync_across_two_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [
        context.Process(target=_worker, args=(rank, port, str(tmp_path))) for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        if process.is_alive():
            process.terminate()
    assert [p.exitcode for p in processes] == [0, 0], "a DDP worker failed or hung"

    single = TaskMetrics(TASKS, scorers={"math": exact_match})
    _feed(single, SHARDS[0] + SHARDS[1])
    expected = single.compute()
    assert set(expected) == {*TASKS, MACRO}
    predictions, references = [p for p, _ in CASES], [r for _, r in CASES]
    assert expected["text"]["sacrebleu"] == pytest.approx(published_bleu(predictions, references), abs=1e-6)
    rouge = published_rouge(predictions, references)
    assert {key: expected["text"][key] for key in rouge} == pytest.approx(rouge, abs=1e-6)
    assert expected["short"]["sacrebleu"] is None and expected["short"]["rouge2"] is None
    for rank in range(WORLD_SIZE):
        synced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in ("first", "second"):
            assert synced[key].keys() == expected.keys()
            for task, values in expected.items():
                assert synced[key][task].keys() == values.keys(), (rank, key, task)
                for metric, value in values.items():
                    if value is None:  # not applicable: the same verdict on every rank
                        assert synced[key][task][metric] is None, (rank, key, task, metric)
                    else:
                        assert synced[key][task][metric] == pytest.approx(value, rel=1e-9), (rank, key, task)
