"""One optimizer step's gradient and one evaluation, on 1 process (in pytest) or 2 DDP processes (gloo, CPU).

``python -m tests.training.objective_worker OUT_DIR`` runs the two-process cases (Lightning re-launches this
module for rank 1) and writes what rank 0 saw to ``OUT_DIR``; ``test_objective.py`` runs the same functions
in-process on one device and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.training import MultiTaskLM
from tests.tiny import tiny_byte_llama

GLOBAL_BATCH = 4
# Short (qa: ~5 response tokens) and long (code: ~33) answers; the sizes make an odd number of evaluation
# examples, so Lightning's distributed sampler would have to pad one rank's shard with a repeat.
TASKS = [
    {"name": "qa", "source": "synthetic", "path": "qa", "num_examples": 40},
    {"name": "code", "source": "synthetic", "path": "code", "num_examples": 45},
]


def datamodule(batch_size: int, cache: Path) -> MultiTaskDataModule:
    return MultiTaskDataModule(
        tasks=TASKS,
        batch_size=batch_size,
        eval_batch_size=3,
        sampling="uniform",
        seed=7,
        cache_dir=str(cache),
        generation_samples_per_task=1,
    )


def model(reduction: str) -> MultiTaskLM:
    # ``cam`` (no router): nothing random in the forward, so different groupings must give the same gradient.
    L.seed_everything(0)
    return MultiTaskLM(tiny_byte_llama(), method="cam", learning_rate=1e-2, loss_reduction=reduction)


class Recorder(L.Callback):
    """The gradient of the first optimizer step (after DDP's all-reduce), the examples trained on, and, in
    evaluation, every example this rank scored and the per-task metrics synced over ranks."""

    def __init__(self) -> None:
        self.gradient: dict[str, torch.Tensor] = {}
        self.trained: list[list[int]] = []
        self.scored: list[tuple[int, int]] = []
        self.metrics: dict[str, Any] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.trained.append(batch["input_ids"].sum(dim=1).tolist())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.gradient:
            self.gradient = {
                n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        tokens = (batch["labels"][:, 1:] != -100).sum(dim=1)
        self.scored.extend(zip(batch["task_ids"].tolist(), tokens.tolist()))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # runs before the module resets them
        self.metrics = {
            "tasks": pl_module.val_metrics.compute(),
            "overall": {k: float(v) for k, v in pl_module.val_overall.compute().items()},
        }


def _trainer(root: Path, devices: int, accumulate: int, recorder: Recorder) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[recorder],
    )


def first_step(root: Path, devices: int, accumulate: int, reduction: str) -> Recorder:
    """Fit one optimizer step on the global batch of ``GLOBAL_BATCH`` examples."""
    recorder = Recorder()
    data = datamodule(GLOBAL_BATCH // (devices * accumulate), root / "cache")
    _trainer(root, devices, accumulate, recorder).fit(model(reduction), datamodule=data)
    return recorder


def evaluate(root: Path, devices: int) -> Recorder:
    recorder = Recorder()
    trainer = _trainer(root, devices, 1, recorder)
    trainer.limit_val_batches = 1.0
    trainer.validate(model("token"), datamodule=datamodule(GLOBAL_BATCH, root / "cache"), verbose=False)
    return recorder


def main(out_dir: Path) -> None:
    results: dict[str, Any] = {}
    for reduction in ("token", "sequence"):
        for accumulate in (1, 2):
            recorder = first_step(out_dir, 2, accumulate, reduction)
            results[f"{reduction}/{accumulate}"] = {
                "gradient": recorder.gradient,
                "trained": recorder.trained,
            }
    recorder = evaluate(out_dir, 2)
    results["evaluation"] = {"scored": recorder.scored, "metrics": recorder.metrics}
    rank = torch.distributed.get_rank()
    torch.save(results, out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
