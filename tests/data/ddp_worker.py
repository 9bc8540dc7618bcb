"""Run by ``test_ddp.py`` in a subprocess: a 2-process CPU ``ddp_spawn`` fit that records what each rank trained on.

Usage: ``python -m tests.data.ddp_worker OUT_DIR``; writes ``OUT_DIR/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import torch

from hycam_pl.data import MultiTaskDataModule, TaskConfig

KINDS = ("arithmetic", "code", "qa", "list_ops")


def make_datamodule(out_dir: str) -> MultiTaskDataModule:
    tasks = [TaskConfig(name=kind, source="synthetic", path=kind, num_examples=40) for kind in KINDS]
    return MultiTaskDataModule(
        tasks, batch_size=2, cache_dir=f"{out_dir}/cache", generation_samples_per_task=3
    )


class Recorder(pl.LightningModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.embedding = torch.nn.Embedding(384, 4)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].sum(1).tolist())
        return self.embedding(batch["input_ids"]).mean()

    def on_train_end(self) -> None:
        datamodule = self.trainer.datamodule
        sampler = self.trainer.train_dataloader.batch_sampler
        result = {
            "seen": self.seen,
            "sampler": [type(sampler).__name__, sampler.num_replicas, sampler.rank, len(sampler)],
            "generation_prompts": [
                p for b in datamodule.generation_dataloader("validate") for p in b["prompts"]
            ],
        }
        with open(f"{self.out_dir}/rank{self.global_rank}.json", "w") as file:
            json.dump(result, file)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    out_dir = sys.argv[1]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(Recorder(out_dir), datamodule=make_datamodule(out_dir))
