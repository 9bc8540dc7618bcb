"""Scale-out on CPU (gloo): DDP and FSDP2 runs agree with one process, FSDP2 resumes exactly, the sharded build
holds less host memory than the full one on the ranks it spares, checkpoints hold only trainable weights, and
``hycam export`` turns any of them into an adapter that reproduces the trained model's logits on a fresh base.
The GPU-only strategies (Lightning's ``fsdp``, DeepSpeed) build from their configs and fail on CPU with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from hycam_pl.training.checkpoints import read_checkpoint
from hycam_pl.training.export import export, module_from_checkpoint
from hycam_pl.training.sharding import check_strategy, trainable_units

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
GPU_ONLY = [
    "fsdp",
    "deepspeed_zero2",
    "deepspeed_zero2_offload",
    "deepspeed_zero3",
    "deepspeed_zero3_offload",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """DDP and FSDP2 fits (2 processes, one launch), an FSDP2 run resumed from step 2, and a test after fit."""
    out = tmp_path_factory.mktemp("scale")
    run_worker("scale_worker", "fit", out)
    return out


@pytest.mark.parametrize("run", ["ddp", "fsdp2", "fsdp2-hycam", "fsdp2-molora", "fsdp2-hydralora"])
def test_both_ranks_hold_identical_adapter_weights(runs, run):
    assert_ranks_hold_identical_weights(runs, run)


def test_two_process_runs_match_one_process_on_the_same_global_batch(runs, tmp_path):
    single = single_process_fit("cam", runs, tmp_path)
    fresh = model("cam")
    initial = {n: p.detach() for n, p in fresh.named_parameters() if p.requires_grad}
    assert any(not torch.equal(single[n], initial[n]) for n in single), "training changed nothing"
    for run in ("ddp", "fsdp2"):
        weights = rank_weights(runs, run, 0)
        assert weights.keys() == single.keys()
        for name, value in single.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=f"{run}: {name}")


@pytest.mark.parametrize("method", ["molora", "hydralora"])
def test_fsdp2_mixture_baselines_match_one_process(runs, tmp_path, method):
    """MoLoRA / HydraLoRA route in hooks; sharded, they train exactly as in one process (soft top-k: no noise)."""
    single = single_process_fit(method, runs, tmp_path)
    weights = rank_weights(runs, f"fsdp2-{method}", 0)
    assert weights.keys() == single.keys()
    initial = {n: p.detach() for n, p in model(method).named_parameters() if p.requires_grad}
    assert any(not torch.equal(single[n], initial[n]) for n in single), "training changed nothing"
    for name, value in single.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=f"{method}: {name}")


def test_resumed_fsdp2_run_continues_exactly(runs):
    straight, resumed = rank_weights(runs, "fsdp2-hycam", 0), rank_weights(runs, "fsdp2-hycam-resumed", 0)
    assert any(".experts." in name for name in straight)  # HyCAM: Gumbel routing, per-rank random streams
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert json.loads((runs / "tested-rank1.json").read_text()) == {"ok": True}  # test() after fit, sharded


@pytest.mark.parametrize("run", ["ddp", "fsdp2-hycam"])
def test_checkpoints_hold_trainable_weights_and_optimizer_state(runs, run):
    checkpoint = torch.load(runs / run / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(checkpoint["state_dict"])
    trainable = module_from_checkpoint(checkpoint).trainable_keys()
    assert keys == trainable
    state = checkpoint["optimizer_states"][0]["state"]
    assert len(state) == len(trainable) and all("exp_avg" in s for s in state.values())


@pytest.mark.parametrize("run", ["ddp", "fsdp2-hycam"])
def test_export_from_a_checkpoint_reproduces_the_logits_on_a_fresh_base(runs, tmp_path, run):
    checkpoint = runs / run / "checkpoints" / "last.ckpt"
    export(checkpoint, tmp_path / "adapter")
    assert_export_reproduces_logits(checkpoint, tmp_path / "adapter")


def test_fsdp2_overlay_through_the_cli_then_hycam_export(tmp_path):
    """The shipped overlay on the tiny config, 2 processes, bf16-mixed with activation checkpointing;
    ``hycam export`` on its checkpoint; the adapter written at the end of fit (gathered from the shards)
    equals the exported one."""
    config = tiny_quickstart(tmp_path, max_steps=2, val_every=2, num_examples=16)
    overlay = TRAINER_CONFIGS / "fsdp2.yaml"
    # bf16 autocast and activation checkpointing inside the FSDP2 units, as on GPUs
    options = ("--trainer.precision", "bf16-mixed", "--model.activation_checkpointing", "true")
    run_cli("fit", "-c", str(config), "-c", str(overlay), "--trainer.devices", "2", *options, cwd=tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    result = run_cli("export", str(checkpoint), str(tmp_path / "exported"), cwd=tmp_path)
    assert "Wrote the adapter" in result.stdout
    assert_export_reproduces_logits(checkpoint, tmp_path / "exported")
    fit_adapter = tmp_path / "runs" / "tiny" / "version_0" / "adapter" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "exported" / "adapter_model.safetensors")
    at_fit_end = load_file(fit_adapter)
    assert exported.keys() == at_fit_end.keys()
    assert all(torch.equal(exported[k], at_fit_end[k]) for k in exported)


def test_fsdp2_distributed_checkpoint_folders_test_and_resume(tmp_path):
    """``save_distributed_checkpoint: true``: the folders hold the trainable shards only, and both ``hycam test
    --ckpt_path last`` (the same test loss as the adapter written at the end of fit) and a resumed fit read
    them; Lightning alone asks a folder for every frozen weight too and fails."""
    config = tiny_quickstart(tmp_path, max_steps=2, val_every=2, num_examples=16)
    sharded = ("-c", str(TRAINER_CONFIGS / "fsdp2.yaml"), "--trainer.devices", "2")
    sharded += ("--trainer.strategy.init_args.save_distributed_checkpoint", "true")
    run_cli("fit", "-c", str(config), *sharded, cwd=tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()
    run_cli("test", "-c", str(config), *sharded, "--ckpt_path", "last", cwd=tmp_path)
    runs = tmp_path / "runs" / "tiny"
    from_folder = json.loads((runs / "version_1" / "results.json").read_text())
    run_cli("test", "-c", str(config), "--model.adapter", str(runs / "version_0" / "adapter"), cwd=tmp_path)
    from_adapter = json.loads((runs / "version_2" / "results.json").read_text())
    assert from_folder["macro"]["loss"] == pytest.approx(from_adapter["macro"]["loss"], rel=1e-5)
    run_cli(
        "fit", "-c", str(config), *sharded, "--trainer.max_steps", "4", "--ckpt_path", "last", cwd=tmp_path
    )
    resumed = read_checkpoint(last, "test")  # the folder again, now at step 4
    assert resumed["global_step"] == 4 and resumed["state_dict"]


def test_hycam_export_reports_a_missing_checkpoint_in_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "hycam_pl.cli", "export", str(tmp_path / "none.ckpt"), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: hycam export CKPT: checkpoint not found")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- memory
@pytest.fixture(scope="module")
def memory(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("memory")
    # Each rank receives every weight whole before keeping its shard; glibc's dynamic mmap threshold would keep
    # those freed blocks in the heap (resident, reusable) and hide what is live. A fixed threshold makes the
    # resident peak follow live memory, as in the ZeRO-3 measurement (test_deepspeed.py).
    run_worker("scale_worker", "memory", out, MALLOC_MMAP_THRESHOLD_="65536")
    return {p.stem.split("-")[1]: json.loads(p.read_text()) for p in out.glob("memory-*.json")}


def test_sharded_build_holds_less_host_memory_than_the_full_build(memory):
    full, rank0, rank1 = memory["full"], memory["rank0"], memory["rank1"]
    print(
        f"peak host memory of the build: full {full['peak'] / 2**20:.0f} MiB ({full['params']:,} parameters); "
        f"sharded over 2 ranks: rank 0 {rank0['peak'] / 2**20:.0f} MiB, rank 1 {rank1['peak'] / 2**20:.0f} MiB"
    )
    weights = full["params"] * 4
    assert full["peak"] >= 0.9 * weights  # the measurement sees the model
    assert rank1["local_params"] * 2 == pytest.approx(full["params"], rel=0.01)
    # Rank 1 never holds the whole model: its shard plus one tensor in flight, far below the full build.
    assert rank1["peak"] < 0.75 * full["peak"]
    assert rank0["identical"] and rank1["identical"]  # the shards hold the unsharded build's weights


# ---------------------------------------------------------------------------------- GPU-only strategies
@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_only_strategy_config_builds_and_is_refused_on_cpu(name):
    options = yaml.safe_load((TRAINER_CONFIGS / f"{name}.yaml").read_text())["trainer"]
    strategy = instantiate_class((), options["strategy"])
    assert type(strategy).__name__ in ("FSDPStrategy", "DeepSpeedStrategy")
    if name.startswith("deepspeed"):
        stage = options["strategy"]["init_args"]["stage"]
        assert strategy.config["zero_optimization"]["stage"] == stage
        assert strategy.exclude_frozen_parameters
    else:
        assert strategy.kwargs["use_orig_params"] is True
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="runs on CUDA GPUs only"):
            check_strategy(options)


def test_gpu_only_overlay_fails_on_cpu_with_one_error_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the overlay would run")
    config = tiny_quickstart(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "hycam_pl.cli", "fit", "-c", str(config)]
    command += ["-c", str(TRAINER_CONFIGS / "deepspeed_zero3.yaml")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DeepSpeed runs on CUDA GPUs only" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


def test_fsdp_units_keep_frozen_and_trainable_parameters_apart():
    for method in ("hycam", "lora", "molora"):
        lm = model(method)
        units = trainable_units(lm.model)
        assert units, method
        for unit in units:
            assert all(p.requires_grad for p in unit.parameters()), method
        covered = {id(p) for unit in units for p in unit.parameters()}
        trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad and id(p) not in covered]
        assert not trainable, f"{method}: trainable parameters outside their own units: {trainable[:3]}"
