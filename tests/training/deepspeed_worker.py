"""DeepSpeed runs on CPU, for ``test_deepspeed.py``: hycam_pl's ``DeepSpeedStrategy`` (Lightning's, able to
evaluate from ZeRO-3 folders) with DeepSpeed's CPU accelerator over gloo. Lightning refuses DeepSpeed without
CUDA in two checks only (the accelerator type and CUDA device indices); the subclass below gets past both and
changes nothing else.

``python -m tests.training.deepspeed_worker fit OUT_DIR``: in one 2-process launch, fits with the strategy of
each shipped DeepSpeed config (ZeRO-2 and ZeRO-3, each with and without offload; every method under ZeRO-3; bf16
with activation checkpointing) on the same global batches as ``scale_worker``'s single-process fit; a ZeRO-3
HyCAM fit resumed from its step-2 checkpoint; and a test of a fresh module from that run's last checkpoint
folder (generation on partitioned weights, ranks in step). Each rank writes the adapter weights it holds to
``OUT_DIR/<run>-rank<r>.pt``.

``python -m tests.training.deepspeed_worker memory OUT_DIR``: the peak host memory of the ZeRO-3 build per rank of
2 processes, and of one process building the full model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy

from hycam_pl.training import MultiTaskLM
from hycam_pl.training.sharding import (
    DeepSpeedStrategy,
    build_zero3_partitioned,
    deferred_build,
    trainable_state_dict,
)
from tests.tiny import tiny_byte_llama
from tests.training.conftest import REPO
from tests.training.objective_worker import datamodule
from tests.training.scale_worker import (
    GLOBAL_BATCH,
    MEMORY_BACKBONE,
    _peak_rss_since_reset,
    _reset_peak,
    measure_build_memory,
    model,
    trainer,
)

os.environ.setdefault("DS_ACCELERATOR", "cpu")
TRAINER_CONFIGS = REPO / "configs" / "trainer"


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """hycam_pl's (Lightning's) ``DeepSpeedStrategy``, minus its two CUDA-only checks (DeepSpeed itself runs on
    CPU)."""

    def setup_environment(self) -> None:
        # CUDA-style device indices (cpu:0, cpu:1): Lightning checks them and hands DeepSpeed the local one.
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices))]
        DDPStrategy.setup_environment(self)  # skips the accelerator check


def strategy(config: str) -> CPUDeepSpeedStrategy:
    """The strategy of ``configs/trainer/<config>.yaml`` (its ``init_args`` as shipped), over gloo."""
    options = yaml.safe_load((TRAINER_CONFIGS / f"{config}.yaml").read_text())["trainer"]["strategy"]
    assert options["class_path"] == "hycam_pl.training.sharding.DeepSpeedStrategy"
    return CPUDeepSpeedStrategy(**options["init_args"], process_group_backend="gloo")


def fit(
    out: Path,
    name: str,
    config: str,
    method: str = "hycam",
    ckpt: str | None = None,
    precision: str = "32-true",
    activation_checkpointing: bool = False,
):
    lm = model(method, deferred=True)
    lm.hparams.activation_checkpointing = activation_checkpointing  # read by the (deferred) build
    data = datamodule(GLOBAL_BATCH // 2, out / "cache")
    run = trainer(out / name, 2, strategy(config), precision=precision)
    run.fit(lm, datamodule=data, ckpt_path=ckpt)
    with torch.no_grad():
        weights = trainable_state_dict(lm)  # collective under ZeRO-3: every rank gathers the full tensors
    torch.save(weights, out / f"{name}-rank{run.global_rank}.pt")
    info = {
        "checkpointing": lm.model.is_gradient_checkpointing,
        "dtype": str(next(lm.model.parameters()).dtype),
    }
    (out / f"{name}-rank{run.global_rank}.json").write_text(json.dumps(info))
    return lm


def main_fit(out: Path) -> None:
    fit(out, "zero2-cam", "deepspeed_zero2", "cam")
    fit(out, "zero3-cam", "deepspeed_zero3", "cam")
    # ZeRO-Offload: the optimizer (DeepSpeed's CPU AdamW) and, at stage 3, the parameters in host memory.
    fit(out, "zero2-offload-cam", "deepspeed_zero2_offload", "cam")
    fit(out, "zero3-offload-cam", "deepspeed_zero3_offload", "cam")
    # DoRA's magnitude is computed from the (partitioned) base weights; the mixtures' routers and LoRA factors
    # run from hooks, whose modules ZeRO-3 must gather too; full fine-tuning partitions every trainable weight.
    for method in ("lora", "dora", "ia3", "molora", "hydralora", "full"):
        fit(out, f"zero3-{method}", "deepspeed_zero3", method)
    fit(
        out,
        "zero3-bf16-checkpointed",
        "deepspeed_zero3",
        precision="bf16-mixed",
        activation_checkpointing=True,
    )
    fit(out, "zero3-hycam", "deepspeed_zero3")
    checkpoint = out / "zero3-hycam" / "checkpoints" / "epoch=0-step=2.ckpt"
    fit(out, "zero3-hycam-resumed", "deepspeed_zero3", ckpt=str(checkpoint))
    # Evaluation from the checkpoint folder in a fresh module, as `hycam test --ckpt_path` does: the weights
    # are consolidated and scattered into the partitioned parameters; generation runs on them, ranks in step.
    fresh = model("hycam", deferred=True)
    fresh.generation.max_new_tokens = 4
    tester = trainer(out / "zero3-hycam-resumed", 2, strategy("deepspeed_zero3"), limit_test_batches=1)
    last = out / "zero3-hycam-resumed" / "checkpoints" / "last.ckpt"
    tester.test(fresh, datamodule=datamodule(GLOBAL_BATCH, out / "cache"), ckpt_path=str(last), verbose=False)
    with torch.no_grad():
        weights = trainable_state_dict(fresh)
    torch.save(weights, out / f"zero3-hycam-tested-rank{tester.global_rank}.pt")


# ----------------------------------------------------------------------------------------- memory
ZERO3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}


def _memory_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """What ``configure_model`` does under ZeRO-3 (inside ``zero.Init``), measured, then checked value by value."""
    import deepspeed
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # zero.Init places each rank's partition by it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    deepspeed.init_distributed(dist_backend="gloo")
    with deferred_build():
        warm_up = MultiTaskLM(tiny_byte_llama(), method="hycam")
        lm = MultiTaskLM(MEMORY_BACKBONE, method="hycam")
    # The same path on a tiny model first, so that the measurement sees the build, not DeepSpeed's first-use
    # imports and communication buffers.
    warm_source = warm_up.build_model() if rank == 0 else None
    with deepspeed.zero.Init(config_dict_or_path=ZERO3):
        build_zero3_partitioned(warm_up, ZERO3, warm_source)
    dist.barrier()
    torch.manual_seed(0)
    before = _reset_peak()
    source = lm.build_model() if rank == 0 else None
    with deepspeed.zero.Init(config_dict_or_path=ZERO3):
        partitioned = build_zero3_partitioned(lm, ZERO3, source)
    peak = _peak_rss_since_reset() - before
    del source
    local = sum(p.ds_tensor.numel() for p in partitioned.parameters())
    torch.manual_seed(0)  # the same random stream as rank 0's build (adapter initialisation)
    full = lm.build_model()
    reference, buffers = dict(full.named_parameters()), dict(full.named_buffers())
    identical = True
    for name, param in partitioned.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            identical &= torch.equal(param.data, reference[name].data)
    identical &= all(torch.equal(b, buffers[n]) for n, b in partitioned.named_buffers())
    Path(out, f"memory-rank{rank}.json").write_text(
        json.dumps({"peak": peak, "local_params": local, "identical": bool(identical)})
    )
    dist.barrier()
    dist.destroy_process_group()


def main_memory(out: Path) -> None:
    """The full build, then a 2-process ZeRO-3 build."""
    measure_build_memory(out, _memory_rank)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mode, directory = sys.argv[1], Path(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    {"fit": main_fit, "memory": main_memory}[mode](directory)
