"""One tiny quickstart ``hycam fit`` + ``hycam test``, shared by every end-to-end evaluation test.

The config is ``configs/quickstart.yaml`` itself with every path moved into a temporary directory and the
sizes cut down (d=64, 2 layers, 40 examples per task, 12 steps), so these tests follow the real quickstart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "tiny.yaml"
TASKS = ("arithmetic", "code", "qa", "list_ops")
METRICS = ("loss", "ppl", "sacrebleu", "rouge1", "rouge2", "rougeL", "exact_match", "task_score")
MAX_STEPS = 12
LOG_EVERY = 3  # trainer.log_every_n_steps and RoutingTelemetry.every_n_steps
VAL_EVERY = 6
VAL_BATCHES = 1


def tiny_quickstart(root: Path) -> Path:
    """Write the cut-down quickstart config into ``root`` and return its path."""
    config = yaml.safe_load(QUICKSTART.read_text())
    trainer = config["trainer"]
    trainer.update(max_steps=MAX_STEPS, val_check_interval=VAL_EVERY, log_every_n_steps=LOG_EVERY)
    # A limited validation, as the quickstart's (limit_val_batches: 4): one batch of 16 of the 32 validation
    # examples, which must still cover all four tasks (test_limited_validation.py).
    trainer["limit_val_batches"] = VAL_BATCHES
    trainer["logger"]["init_args"]["save_dir"] = str(root / "runs")
    for callback in trainer["callbacks"]:
        args = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("ModelCheckpoint"):
            args.update(dirpath=str(root / "checkpoints"), every_n_train_steps=VAL_EVERY)
        if callback["class_path"].endswith("RoutingTelemetry"):
            args["every_n_steps"] = LOG_EVERY
    config["model"]["backbone"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    config["model"]["generation"]["max_new_tokens"] = 8
    data = config["data"]
    data.update(
        batch_size=4, eval_batch_size=16, generation_samples_per_task=4, cache_dir=str(root / "cache")
    )
    for task in data["tasks"]:
        task["num_examples"] = 40
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def hycam(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the ``hycam`` console script (the installed entry point) offline; fail with its output."""
    script = Path(sys.executable).with_name("hycam")
    command = [str(script) if script.exists() else "hycam", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


@dataclass
class TinyRun:
    root: Path
    config: Path
    fit_dir: Path  # TensorBoard events and adapter/ of ``hycam fit``
    test_dir: Path  # results.json / results.md of ``hycam test``
    test_stdout: str
    num_experts: int
    num_layers: int


def _versions(root: Path) -> set[Path]:
    return set((root / "runs" / "tiny").glob("version_*"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    root = tmp_path_factory.mktemp("quickstart")
    config = tiny_quickstart(root)
    hycam("fit", "-c", str(config), cwd=root)
    (fit_dir,) = _versions(root)
    hycam_result = hycam("test", "-c", str(config), "--ckpt_path", "last", cwd=root)
    (test_dir,) = _versions(root) - {fit_dir}
    loaded = yaml.safe_load(config.read_text())
    return TinyRun(
        root=root,
        config=config,
        fit_dir=fit_dir,
        test_dir=test_dir,
        test_stdout=hycam_result.stdout,
        num_experts=loaded["model"]["method"]["init_args"]["num_experts"],
        num_layers=loaded["model"]["backbone"]["num_hidden_layers"],
    )
