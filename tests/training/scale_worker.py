"""Multi-process scale-out runs on CPU (gloo), for ``test_scale.py``.

``python -m tests.training.scale_worker fit OUT_DIR``: in one 2-process launch (Lightning re-runs this module
for rank 1): a DDP and an FSDP2 fit of ``cam`` on the same global batches, and an FSDP2 fit of ``hycam`` run
straight through and resumed from its step-2 checkpoint, then tested (generation on sharded weights). Each rank
writes the adapter weights it holds to ``OUT_DIR/<run>-rank<r>.pt``.

``python -m tests.training.scale_worker memory OUT_DIR``: the peak host memory of building the model, per rank
of a 2-process sharded build and for one process building the full model.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hycam_pl.training import MultiTaskLM
from hycam_pl.training.sharding import FSDP2Strategy, deferred_build, trainable_state_dict
from tests.methods.helpers import build
from tests.tiny import tiny_byte_llama
from tests.training.objective_worker import datamodule

GLOBAL_BATCH = 4
STEPS = 4
# Options under which 2 ranks and 1 process compute the same step: the mixtures route by soft top-k
# (noise-free) and without the balance loss (each rank balances its own tokens, as in Switch Transformers);
# peft methods run without dropout (its masks come from each rank's own random stream).
MIXTURE_OPTIONS = {"routing": "softmax_topk", "balance_coef": 0.0}
DETERMINISTIC_OPTIONS = {
    "molora": MIXTURE_OPTIONS,
    "hydralora": MIXTURE_OPTIONS,
    "lora": {"lora_dropout": 0.0},
    "dora": {"lora_dropout": 0.0},
}


def model(method: str, deferred: bool = False) -> MultiTaskLM:
    """``deferred``: the model is built in ``configure_model`` (per rank, sharded), as the CLI does under FSDP2."""
    L.seed_everything(0)
    chosen = build(method, **DETERMINISTIC_OPTIONS[method]) if method in DETERMINISTIC_OPTIONS else method
    with deferred_build() if deferred else nullcontext():
        return MultiTaskLM(tiny_byte_llama(), method=chosen, learning_rate=1e-2, warmup_ratio=0.0)


def trainer(root: Path, devices: int, strategy: str | L.pytorch.strategies.Strategy, **kwargs) -> L.Trainer:
    strategy_object = strategy
    if isinstance(strategy, str):
        strategy_object = FSDP2Strategy() if strategy == "fsdp2" else ("ddp" if devices > 1 else "auto")
    options = dict(
        accelerator="cpu",
        devices=devices,
        strategy=strategy_object,
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=root / "checkpoints", every_n_train_steps=2, save_top_k=-1, save_last=True
            )
        ],
    )
    options.update(kwargs)
    return L.Trainer(**options)


def fit(
    out: Path, name: str, devices: int, strategy: str, method: str, ckpt: str | None = None
) -> MultiTaskLM:
    lm = model(method, deferred=strategy == "fsdp2")
    assert lm.model_built is (strategy != "fsdp2")
    data = datamodule(GLOBAL_BATCH // devices, out / "cache")
    run = trainer(out / name, devices, strategy)
    run.fit(lm, datamodule=data, ckpt_path=ckpt)
    weights = trainable_state_dict(lm)  # collective under FSDP2: every rank gathers the full tensors
    torch.save(weights, out / f"{name}-rank{run.global_rank}.pt")
    return lm


def single_process_fit(method: str, data_dir: Path, root: Path) -> dict[str, torch.Tensor]:
    """The trainable weights after the same steps in one process on the global batch (the reference)."""
    lm = model(method)
    trainer(root, 1, "auto").fit(lm, datamodule=datamodule(GLOBAL_BATCH, data_dir / "cache"))
    return {n: p.detach() for n, p in lm.named_parameters() if p.requires_grad}


def main_fit(out: Path) -> None:
    fit(out, "ddp", 2, "ddp", "cam")
    fit(out, "fsdp2", 2, "fsdp2", "cam")
    fit(out, "fsdp2-hycam", 2, "fsdp2", "hycam")
    # The mixture baselines act through hooks on the attention and its projections: their routers and LoRA
    # mixtures are FSDP units whose parameters must be gathered around those hook calls too.
    fit(out, "fsdp2-molora", 2, "fsdp2", "molora")
    fit(out, "fsdp2-hydralora", 2, "fsdp2", "hydralora")
    checkpoint = out / "fsdp2-hycam" / "checkpoints" / "epoch=0-step=2.ckpt"
    lm = fit(out, "fsdp2-hycam-resumed", 2, "fsdp2", "hycam", ckpt=str(checkpoint))
    # Evaluation after fit re-runs configure_model (the model is already sharded) and generates collectively.
    tester = trainer(out / "fsdp2-hycam-resumed", 2, "fsdp2", limit_test_batches=1)
    lm.generation.max_new_tokens = 4
    tester.test(lm, datamodule=datamodule(GLOBAL_BATCH, out / "cache"), verbose=False)
    (out / f"tested-rank{tester.global_rank}.json").write_text(json.dumps({"ok": True}))


# ----------------------------------------------------------------------------------------- memory
MEMORY_BACKBONE = tiny_byte_llama(
    hidden_size=384, intermediate_size=1152, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=6
)


def _peak_rss_since_reset() -> int:
    """Bytes: the peak resident set size since the last reset (``/proc/self/clear_refs``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss_since_reset()


def _warm_up(lm: MultiTaskLM) -> None:
    """Build the model's structure once on the meta device (no storage) before measuring, so that the one-off
    cost of importing the backbone's modelling code (transformers imports it lazily, about 25 MiB of resident
    memory) falls outside both measured windows: they compare the memory the weights take, not imports."""
    lm.build_model(structure_only=True)


def _memory_rank(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    from hycam_pl.training.sharding import build_fully_sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    with deferred_build():
        lm = MultiTaskLM(MEMORY_BACKBONE, method="hycam")
    _warm_up(lm)
    dist.barrier()
    torch.manual_seed(0)
    before = _reset_peak()
    sharded = build_fully_sharded(lm, mesh)
    peak = _peak_rss_since_reset() - before
    local = sum(p.to_local().numel() for p in sharded.parameters())
    # The shards hold exactly the unsharded build's weights (init_seed), buffers included.
    torch.manual_seed(0)  # the same random stream as rank 0's build (adapter initialisation)
    full = lm.build_model()
    reference = dict(full.named_parameters())
    identical = all(
        torch.equal(
            p.to_local(),
            distribute_tensor(reference[n].detach(), mesh, p.placements, src_data_rank=None).to_local(),
        )
        for n, p in sharded.named_parameters()
    ) and all(torch.equal(b, dict(full.named_buffers())[n]) for n, b in sharded.named_buffers())
    Path(out, f"memory-rank{rank}.json").write_text(
        json.dumps({"peak": peak, "local_params": local, "identical": identical})
    )
    dist.barrier()
    dist.destroy_process_group()


def measure_build_memory(out: Path, sharded_rank: Any) -> None:
    """The full build's peak (this process), then ``sharded_rank(rank, world, init_file, out)`` on 2 processes."""
    torch.set_num_threads(1)
    with deferred_build():
        lm = MultiTaskLM(MEMORY_BACKBONE, method="hycam")
    _warm_up(lm)
    before = _reset_peak()
    full = lm.build_model()
    peak = _peak_rss_since_reset() - before
    params = sum(p.numel() for p in full.parameters())
    (out / "memory-full.json").write_text(json.dumps({"peak": peak, "params": params}))
    del full
    torch.multiprocessing.spawn(sharded_rank, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)


def main_memory(out: Path) -> None:
    """The full build, then a 2-process FSDP2 build."""
    measure_build_memory(out, _memory_rank)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mode, directory = sys.argv[1], Path(sys.argv[2])
    {"fit": main_fit, "memory": main_memory}[mode](directory)
