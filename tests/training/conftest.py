"""Shared helpers: a cut-down quickstart config written into a temporary directory, and the CLI in a subprocess."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "tiny.yaml"
TASKS = ("arithmetic", "code", "qa", "list_ops")


def tiny_quickstart(
    tmp_path: Path, max_steps: int = 12, val_every: int = 6, num_examples: int = 40, **model
) -> Path:
    """The quickstart config with every path inside ``tmp_path``, a smaller model and fewer steps."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config = copy.deepcopy(config)
    trainer = config["trainer"]
    trainer.update(max_steps=max_steps, val_check_interval=val_every, log_every_n_steps=2)
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=val_every)
        if callback["class_path"].endswith("RoutingTelemetry"):
            callback["init_args"]["every_n_steps"] = 4
    backbone = config["model"]["backbone"]
    backbone.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=256)
    config["model"]["generation"]["max_new_tokens"] = 8
    config["model"].update(model)
    data = config["data"]
    data.update(
        batch_size=4, eval_batch_size=16, generation_samples_per_task=4, cache_dir=str(tmp_path / "cache")
    )
    for task in data["tasks"]:
        task["num_examples"] = num_examples
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, timeout: int = 600, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env_vars)
    command = [sys.executable, "-m", "hycam_pl.cli", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def assert_export_reproduces_logits(checkpoint_path: Path, adapter_dir: Path) -> None:
    """The exported adapter on a freshly loaded base gives exactly the logits of the checkpoint's model."""
    import torch

    from hycam_pl.backbone import load_backbone
    from hycam_pl.training.checkpoints import read_checkpoint
    from hycam_pl.training.export import module_from_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)  # a file, or a distributed / DeepSpeed folder
    trained = module_from_checkpoint(checkpoint)  # deferred: the backbone is built on first use
    trained.model.requires_grad_(False)
    missing, unexpected = trained.load_state_dict(checkpoint["state_dict"], strict=False)
    assert not unexpected and set(missing).isdisjoint(checkpoint["state_dict"])
    fresh = load_backbone(trained.hparams.backbone, init_seed=trained.hparams.init_seed)
    fresh = trained.method.load(fresh, str(adapter_dir))  # the method's own load, as model.adapter uses
    ids = torch.randint(1, 384, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.model.eval()(input_ids=ids).logits
        got = fresh.eval()(input_ids=ids).logits
    assert torch.equal(got, expected)


def run_worker(module: str, mode: str, out: Path, timeout: int = 900, **env_vars: str) -> None:
    """``python -m tests.training.<module> <mode> <out>`` (multi-process runs launch from a script of their own)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **env_vars)
    done = subprocess.run(
        [sys.executable, "-m", f"tests.training.{module}", mode, str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def rank_weights(out: Path, run: str, rank: int) -> dict:
    """The trainable weights rank ``rank`` of a worker's run saved (``<run>-rank<r>.pt``)."""
    import torch

    return torch.load(out / f"{run}-rank{rank}.pt", weights_only=True)


def assert_ranks_hold_identical_weights(out: Path, run: str) -> None:
    import torch

    first, second = rank_weights(out, run, 0), rank_weights(out, run, 1)
    assert first and first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
