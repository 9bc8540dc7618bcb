"""DeepSpeed ZeRO-2 and ZeRO-3 through Lightning's own ``DeepSpeedStrategy``, on CPU (DeepSpeed's CPU
accelerator over gloo; see ``deepspeed_worker``): 2-rank runs agree with one process, ZeRO-3 resumes exactly and
tests (generation on partitioned weights) after fit, checkpoints hold only the trainable weights, ``hycam
export`` reproduces the logits from either stage's checkpoint folder, and the ZeRO-3 build never holds the
whole model on the ranks it spares. Single-GPU smoke runs of these strategies are in ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hycam_pl.training.checkpoints import read_checkpoint
from hycam_pl.training.export import export, module_from_checkpoint

from .conftest import (
    REPO,
    assert_export_reproduces_logits,
    assert_ranks_hold_identical_weights,
    rank_weights,
    run_cli,
    run_worker,
    tiny_quickstart,
)
from .scale_worker import model, single_process_fit

TRAINER_CONFIGS = REPO / "configs" / "trainer"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepspeed")
    run_worker("deepspeed_worker", "fit", out)
    return out


ZERO3_METHODS = ("lora", "dora", "ia3", "molora", "hydralora", "full")


@pytest.mark.parametrize(
    "run",
    [
        "zero2-cam",
        "zero3-cam",
        "zero2-offload-cam",
        "zero3-offload-cam",
        "zero3-hycam",
        "zero3-bf16-checkpointed",
        *(f"zero3-{method}" for method in ZERO3_METHODS),
    ],
)
def test_both_ranks_hold_identical_adapter_weights(runs, run):
    assert_ranks_hold_identical_weights(runs, run)


@pytest.mark.parametrize(
    ("method", "runs_of_method"),
    [
        ("cam", ["zero2-cam", "zero3-cam", "zero2-offload-cam", "zero3-offload-cam"]),
        *((method, [f"zero3-{method}"]) for method in ZERO3_METHODS),
    ],
)
def test_two_rank_deepspeed_runs_match_one_process(runs, tmp_path, method, runs_of_method):
    """Every method under ZeRO-3 (and cam under every shipped overlay) trains as one process does."""
    single = single_process_fit(method, runs, tmp_path)
    initial = {n: p.detach() for n, p in model(method).named_parameters() if p.requires_grad}
    assert any(not torch.equal(single[n], initial[n]) for n in single), "training changed nothing"
    atol = 1e-4 if method == "full" else 1e-5  # full: 2-rank reduction order over every weight of the model
    for run in runs_of_method:
        weights = rank_weights(runs, run, 0)
        assert weights.keys() == single.keys()
        for name, value in single.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=atol, msg=f"{run}: {name}")


def test_zero3_trains_in_bf16_with_activation_checkpointing(runs):
    info = json.loads((runs / "zero3-bf16-checkpointed-rank0.json").read_text())
    assert info == {"checkpointing": True, "dtype": "torch.bfloat16"}
    trained = rank_weights(runs, "zero3-bf16-checkpointed", 0)
    initial = {n: p.detach() for n, p in model("hycam").named_parameters() if p.requires_grad}
    assert trained.keys() == initial.keys()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(trained[n].float(), initial[n].to(torch.bfloat16).float()) for n in trained)


def test_resumed_zero3_run_continues_exactly_and_tests_from_its_checkpoint_folder(runs):
    straight, resumed = rank_weights(runs, "zero3-hycam", 0), rank_weights(runs, "zero3-hycam-resumed", 0)
    assert any(".experts." in name for name in straight)  # HyCAM: Gumbel routing, per-rank random streams
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # test() of a fresh module from the run's last checkpoint folder: it evaluates exactly the trained weights
    for rank in (0, 1):
        tested = rank_weights(runs, "zero3-hycam-tested", rank)
        assert tested.keys() == straight.keys()
        for name in straight:
            torch.testing.assert_close(tested[name], resumed[name], rtol=0, atol=0, msg=name)
    results = json.loads((runs / "zero3-hycam-resumed" / "results.json").read_text())
    assert set(results) >= {"qa", "code", "macro"} and results["macro"]["loss"] > 0


@pytest.mark.parametrize("run", ["zero2-cam", "zero3-offload-cam", "zero3-hycam"])
def test_checkpoint_folders_hold_only_the_trainable_weights(runs, run):
    folder = runs / run / "checkpoints" / "last.ckpt"
    assert folder.is_dir()
    checkpoint = read_checkpoint(folder)
    trainable = module_from_checkpoint(checkpoint).trainable_keys()
    assert set(checkpoint["state_dict"]) == trainable
    # The optimizer state: one fp32 partition per rank, together as many elements as the trainable weights.
    numel = sum(v.numel() for v in checkpoint["state_dict"].values())
    partitions = sorted((folder / "checkpoint").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(partitions) == 2
    held = 0
    for path in partitions:
        state = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        flat = state.get("fp32_flat_groups") or state.get("single_partition_of_fp32_groups")
        held += sum(t.numel() for t in flat)
    assert numel <= held <= numel + 2 * 64  # DeepSpeed pads each rank's partition to an alignment


@pytest.mark.parametrize("run", ["zero2-cam", "zero3-offload-cam", "zero3-hycam"])
def test_export_from_a_deepspeed_checkpoint_reproduces_the_logits_on_a_fresh_base(runs, tmp_path, run):
    checkpoint = runs / run / "checkpoints" / "last.ckpt"
    export(checkpoint, tmp_path / "adapter")
    assert_export_reproduces_logits(checkpoint, tmp_path / "adapter")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_fit_test_resume_and_export_under_zero3(tmp_path):
    """The commands users run, on 2 CPU processes: the shipped ZeRO-3 overlay with only its class swapped for
    the CPU-enabled subclass. fit (validating with generation), test from the last checkpoint folder, fit
    resumed from it, export."""
    options = yaml.safe_load((TRAINER_CONFIGS / "deepspeed_zero3.yaml").read_text())["trainer"]
    options["strategy"]["class_path"] = "tests.training.deepspeed_worker.CPUDeepSpeedStrategy"
    options["strategy"]["init_args"]["process_group_backend"] = "gloo"
    options.update(accelerator="cpu", devices=2, precision="32-true")
    overlay = tmp_path / "zero3-cpu.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": options}))
    files = ("-c", str(tiny_quickstart(tmp_path, max_steps=4, val_every=2)), "-c", str(overlay))
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_cli("fit", *files, cwd=tmp_path, **env)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (last / "checkpoint").is_dir()
    tested = run_cli("test", *files, "--ckpt_path", "last", cwd=tmp_path, **env)
    assert "Per-task test results" in tested.stdout
    resumed = run_cli("fit", *files, "--ckpt_path", "last", "--trainer.max_steps", "6", cwd=tmp_path, **env)
    assert "Restored all states" in resumed.stdout + resumed.stderr
    assert read_checkpoint(last)["global_step"] == 6
    run_cli("export", str(last), str(tmp_path / "adapter"), cwd=tmp_path, **env)
    assert_export_reproduces_logits(last, tmp_path / "adapter")


# ------------------------------------------------------------------------------------------- memory
@pytest.fixture(scope="module")
def memory(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("deepspeed-memory")
    # On CPU, zero.Init creates each parameter whole, then frees it once partitioned; glibc's dynamic mmap
    # threshold would keep those freed blocks in the heap (resident, reusable) and hide what is live. A fixed
    # threshold makes the resident peak follow live memory. (On GPUs those temporaries are in GPU memory.)
    run_worker("deepspeed_worker", "memory", out, MALLOC_MMAP_THRESHOLD_="65536")
    return {p.stem.split("-")[1]: json.loads(p.read_text()) for p in out.glob("memory-*.json")}


def test_zero3_build_holds_less_host_memory_than_the_full_build(memory):
    full, rank0, rank1 = memory["full"], memory["rank0"], memory["rank1"]
    print(
        f"peak host memory of the build: full {full['peak'] / 2**20:.0f} MiB ({full['params']:,} parameters); "
        f"ZeRO-3 over 2 ranks: rank 0 {rank0['peak'] / 2**20:.0f} MiB, rank 1 {rank1['peak'] / 2**20:.0f} MiB"
    )
    assert full["peak"] >= 0.9 * full["params"] * 4  # the measurement sees the model
    assert rank1["local_params"] * 2 == pytest.approx(full["params"], rel=0.01)
    assert rank1["peak"] < 0.75 * full["peak"]  # rank 1 never holds the whole model
    assert rank0["identical"] and rank1["identical"]  # the partitions hold the unsharded build's weights
