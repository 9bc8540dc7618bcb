"""``RoutingTelemetry`` under real 2-process DDP on CPU (gloo): rank 0 logs the window of *both* ranks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from hycam_pl.callbacks import RoutingTelemetry
from hycam_pl.modulation import routing_statistics
from tests.evaluation.helpers import TinyData, TinyLM, read_events, scalar_series, tiny_trainer

K = 4


class RankSpy(L.Callback):
    """Writes this rank's per-batch layer-0 gate sums and token counts to ``rank<r>.json`` (module-level:
    ``ddp_spawn`` pickles callbacks)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.batches: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stats = routing_statistics(pl_module.model)[0]
        self.batches.append({"gate": stats.gate_sum.tolist(), "tokens": float(stats.tokens)})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(self.directory) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.batches))


@pytest.mark.slow
def test_ddp_window_is_summed_over_ranks_and_logged_once(tmp_path):
    trainer = tiny_trainer(
        tmp_path,
        [RoutingTelemetry(every_n_steps=2, histograms=False, images=False), RankSpy(str(tmp_path))],
        max_steps=2,
        strategy="ddp_spawn",
        devices=2,
    )
    trainer.fit(TinyLM(seed=4), datamodule=TinyData(4))  # 2 batches per rank, different on each rank
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(len(batches) == 2 for batches in ranks)
    assert ranks[0] != ranks[1]
    gate = torch.tensor([b["gate"] for batches in ranks for b in batches]).sum(0)
    tokens = sum(b["tokens"] for batches in ranks for b in batches)
    scalars = scalar_series(read_events(tmp_path / "tiny" / "version_0"))
    assert list(scalars["router/entropy"]) == [1]  # one point, from rank 0 only
    got = [scalars[f"router/layer_0/load/expert_{k}"][1] for k in range(K)]
    assert got == pytest.approx((gate / tokens).tolist(), abs=1e-6)
    rank0_only = torch.tensor([b["gate"] for b in ranks[0]]).sum(0) / sum(b["tokens"] for b in ranks[0])
    assert got != pytest.approx(rank0_only.tolist(), abs=1e-6)  # the other rank's tokens really count
