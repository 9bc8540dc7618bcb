"""Tiny configs and a subprocess runner for end-to-end ``hycam`` runs that write only under a tmp directory."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.tiny import tiny_byte_llama

TINY_BACKBONE: dict[str, Any] = tiny_byte_llama(hidden_size=64, intermediate_size=128)
MAX_LENGTH = 256  # the Alpaca prompt alone is ~150 byte tokens
SYNTHETIC_TASK: dict[str, Any] = {
    "name": "arith",
    "source": "synthetic",
    "path": "arithmetic",
    "num_examples": 40,
}
# Deterministic, and two runs can share the 2 cores without changing results.
SUBPROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def run_config(
    root: Path,
    tasks: list[dict[str, Any]] | None = None,
    *,
    max_steps: int = 2,
    every_n_train_steps: int | None = None,
    name: str = "run",
    trainer: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete ``hycam fit`` config whose logs and checkpoints go to ``root/runs`` and ``root/checkpoints``."""
    callbacks = []
    if every_n_train_steps is not None:
        callbacks.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(root / "checkpoints"),
                    "save_last": True,
                    "every_n_train_steps": every_n_train_steps,
                    "save_top_k": 0,
                },
            }
        )
    config: dict[str, Any] = {
        "seed_everything": 2333,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_steps": max_steps,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": every_n_train_steps is not None,
            "default_root_dir": str(root / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "runs"), "name": name},
            },
            "callbacks": callbacks,
        },
        "model": {
            "backbone": dict(TINY_BACKBONE),
            "method": {
                "class_path": "hycam_pl.methods.HyCAMMethod",
                "init_args": {"num_experts": 2, "rank": 4},
            },
            "learning_rate": 3.0e-3,
            "warmup_ratio": 0.0,
        },
        "data": {
            "tokenizer": "byte",
            "max_length": MAX_LENGTH,
            "batch_size": 4,
            "eval_batch_size": 4,
            "cache_dir": None,
            "generation_samples_per_task": 1,
            "tasks": tasks if tasks is not None else [dict(SYNTHETIC_TASK)],
        },
    }
    for section, overrides in (("trainer", trainer), ("model", model), ("data", data)):
        config[section].update(overrides or {})
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any] | bytes | str) -> Path:
    """Rows as JSON lines; raw ``str``/``bytes`` are written as they are (for broken files)."""
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    elif isinstance(rows, str):
        path.write_text(rows, encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def good_records(n: int = 12) -> list[dict[str, str]]:
    return [{"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(n)]


def hycam_command() -> list[str]:
    """The installed console script (what users run); ``python -m hycam_pl.cli`` if it is not installed."""
    script = Path(sys.executable).with_name("hycam")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hycam_pl.cli"]


def hycam_env() -> dict[str, str]:
    return {**os.environ, **SUBPROCESS_ENV}


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_hycam(args: list[str], cwd: Path, timeout: float = 240) -> CliResult:
    """``hycam <args>`` as a user runs it: the console script in a fresh process."""
    done = subprocess.run(
        [*hycam_command(), *args], cwd=cwd, env=hycam_env(), capture_output=True, text=True, timeout=timeout
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_hycam_in_process(args: list[str], cwd: Path) -> CliResult:
    """``hycam_pl.cli.main(args)`` in this process, reported like a process: exit code, stdout, stderr (with
    the traceback an uncaught exception would print). Saves the ~6 s of imports a subprocess costs."""
    from hycam_pl.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    code = 0
    argv, sys.argv = sys.argv, ["hycam"]  # LightningCLI warns when both args and sys.argv[1:] are given
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(args)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:
                code = 1
                stderr.write(traceback.format_exc())
    finally:
        os.chdir(previous)
        sys.argv = argv
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def run_many(
    names: list[str], make_job: Callable[[str, str], tuple[list[str], Path]], in_subprocess: set[str]
) -> dict[tuple[str, str], CliResult]:
    """Run every case in-process, and the ``in_subprocess`` ones also through the console script (in a
    background thread meanwhile). ``make_job(name, mode)`` returns the arguments and a fresh working
    directory; ``mode`` and the result keys' first item are ``"in-process"`` or ``"hycam"``."""
    results: dict[tuple[str, str], CliResult] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {
            name: pool.submit(run_hycam, *make_job(name, "hycam")) for name in names if name in in_subprocess
        }
        for name in names:
            results[("in-process", name)] = run_hycam_in_process(*make_job(name, "in-process"))
        for name, future in futures.items():
            results[("hycam", name)] = future.result()
    return results


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def tiny_data(num_examples: int = 40, batch_size: int = 4) -> Any:
    """The in-process counterpart of :func:`run_config`'s data section (no cache, nothing written)."""
    from hycam_pl.data import MultiTaskDataModule

    task = {**SYNTHETIC_TASK, "num_examples": num_examples}
    return MultiTaskDataModule(
        tasks=[task],
        max_length=MAX_LENGTH,
        batch_size=batch_size,
        cache_dir=None,
        generation_samples_per_task=1,
    )


def tiny_trainer(root: Path, max_steps: int, callbacks: list[Any] | None = None, **kwargs: Any) -> Any:
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks or []),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=callbacks or [],
        **kwargs,
    )
