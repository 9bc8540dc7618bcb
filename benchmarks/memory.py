"""Where a quickstart run's resident memory goes: RSS and peak RSS after each stage of ``hycam fit`` + ``hycam test``.

Stages, all in this one process (as a user's run): importing the CLI (and which heavy libraries that pulls in),
building the model and datamodule from the config, data setup (tokenisation, cached by ``datasets``), the
optimizer, the first training step, the rest of training, each validation, the end of fit (checkpoint, adapter),
then ``test`` from the last checkpoint (teacher-forced loss, generation, scoring, telemetry figures). ``rss`` is the
resident set now, ``peak`` the process's high-water mark so far (``ru_maxrss``): the stage where ``peak`` jumps
is the one responsible. ``--imports`` also measures each heavy library's own import cost in a fresh process.

    python benchmarks/memory.py                     # configs/tiny.yaml, full length (minutes on 2 CPU cores)
    python benchmarks/memory.py --smoke             # a few steps, for CI
    python benchmarks/memory.py --imports           # plus the per-library import table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
# Libraries that cost memory at import; none of them is needed by every path of ``hycam fit``.
HEAVY = (
    "ray",
    "matplotlib",
    "PIL",
    "datasets",
    "pyarrow",
    "pandas",
    "sacrebleu",
    "rouge_score",
    "nltk",
    "peft",
    "accelerate",
    "deepspeed",
    "tensorboard",
    "scipy",
    "sklearn",
    "sympy",
    "torch._dynamo",
)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def live_tensors() -> tuple[int, float]:
    """(count, MB) of the torch tensors the garbage collector can see (a leak shows as growth here)."""
    import gc

    import torch

    count, nbytes, seen = 0, 0, set()
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            count += 1
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                nbytes += storage.nbytes()
    return count, nbytes / MB


def trimmed_rss_mb() -> float:
    """RSS after glibc's ``malloc_trim(0)`` returns free heap pages to the system (Linux/glibc only)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


class Recorder:
    def __init__(self, diagnose: bool = False) -> None:
        self.diagnose = diagnose
        self.rows: list[dict[str, Any]] = []
        self._last = rss_mb()
        self._start = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = rss_mb()
        self.rows.append(
            {
                "stage": stage,
                "rss_mb": round(now, 1),
                "delta_mb": round(now - self._last, 1),
                "peak_mb": round(peak_mb(), 1),
                "seconds": round(time.perf_counter() - self._start, 1),
            }
        )
        self._last = now
        row = self.rows[-1]
        if self.diagnose:
            row["tensors"], row["tensor_mb"] = live_tensors()
            row["tensor_mb"] = round(row["tensor_mb"], 1)
            row["rss_after_trim_mb"] = round(trimmed_rss_mb(), 1)
            self._last = rss_mb()
            print(f"[memory]   {row}", file=sys.stderr, flush=True)
        print(
            f"[memory] {stage}: rss {row['rss_mb']} MB, peak {row['peak_mb']} MB", file=sys.stderr, flush=True
        )


def probe(recorder: Recorder, every: int) -> Any:
    """A callback that marks the stages of fit/test (imported late: Lightning is part of what is measured)."""
    import lightning as L

    class MemoryProbe(L.Callback):
        def __init__(self) -> None:
            self.validations = 0

        def setup(self, trainer, pl_module, stage):
            recorder.mark(f"{stage}: data setup")

        def on_train_start(self, trainer, pl_module):
            recorder.mark("fit: optimizer, loggers, telemetry ready")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1:
                recorder.mark("fit: first training step")
            elif every and trainer.global_step % every == 0:
                recorder.mark(f"fit: training step {trainer.global_step}")

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                recorder.mark(f"fit: training to step {trainer.global_step}")

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.validations += 1
                recorder.mark(f"fit: validation {self.validations}")

        def on_fit_end(self, trainer, pl_module):
            recorder.mark("fit: end (checkpoint, adapter saved)")

        def on_test_epoch_start(self, trainer, pl_module):
            recorder.mark("test: start")

        def on_test_end(self, trainer, pl_module):
            recorder.mark("test: loss, generation, scores, figures")

    return MemoryProbe()


def run_cli(
    subcommand: str, config: Path, workdir: Path, overrides: list[str], recorder: Recorder, every: int = 0
) -> None:
    import hycam_pl.cli as cli

    original = cli.HyCAMCLI.instantiate_trainer
    before = cli.HyCAMCLI.before_instantiate_classes

    def instantiate_trainer(self, **kwargs):
        recorder.mark(f"{subcommand}: model + datamodule built")
        trainer = original(self, **kwargs)
        trainer.callbacks.append(probe(recorder, every))
        return trainer

    def before_instantiate_classes(self):
        recorder.mark(f"{subcommand}: config parsed")
        before(self)

    cli.HyCAMCLI.instantiate_trainer = instantiate_trainer
    cli.HyCAMCLI.before_instantiate_classes = before_instantiate_classes
    try:
        args = [subcommand, "-c", str(config), "--trainer.default_root_dir", str(workdir)]
        args += ["--trainer.logger.init_args.save_dir", str(workdir / "runs"), *overrides]
        if subcommand == "test":
            args += ["--ckpt_path", "last"]
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            cli.main(args)
        finally:
            os.chdir(cwd)
    finally:
        cli.HyCAMCLI.instantiate_trainer = original
        cli.HyCAMCLI.before_instantiate_classes = before


def import_costs() -> list[dict[str, Any]]:
    """Each library's import in a fresh process on top of torch + lightning (what a user pays for it)."""
    code = (
        "import resource, sys, psutil, torch, lightning, transformers\n"
        "p = psutil.Process(); base = p.memory_info().rss\n"
        "__import__(sys.argv[1])\n"
        "print((p.memory_info().rss - base) / 2**20)\n"
    )
    rows = []
    for name in (
        "matplotlib.pyplot",
        "datasets",
        "sacrebleu",
        "rouge_score.rouge_scorer",
        "nltk",
        "peft",
        "ray",
    ):
        done = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True)
        value = float(done.stdout.strip()) if done.returncode == 0 else float("nan")
        rows.append({"library": name, "import_mb": round(value, 1)})
    return rows


def smoke_overrides() -> list[str]:
    return [
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "2",
        "--trainer.log_every_n_steps",
        "2",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--data.generation_samples_per_task",
        "2",
        "--model.generation.max_new_tokens",
        "4",
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | RSS MB | Δ MB | peak MB | s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['rss_mb']} | {r['delta_mb']:+} | {r['peak_mb']} | {r['seconds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    parser.add_argument("--smoke", action="store_true", help="a few steps, tiny generation")
    parser.add_argument("--imports", action="store_true", help="also measure each heavy library's import")
    parser.add_argument("--no-test", action="store_true", help="fit only")
    parser.add_argument(
        "--diagnose", action="store_true", help="count live tensors and malloc_trim at every stage (slower)"
    )
    parser.add_argument("--every", type=int, default=0, help="also mark every N training steps")
    parser.add_argument(
        "overrides", nargs="*", help="more CLI options, after --, e.g. -- --trainer.max_steps 40"
    )
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)

    recorder = Recorder(args.diagnose)
    recorder.mark("python started")
    import hycam_pl.cli  # noqa: F401  (what `hycam` imports before parsing anything)

    recorder.mark("import hycam_pl.cli")
    loaded = [name for name in HEAVY if name in sys.modules]
    overrides = (smoke_overrides() if args.smoke else []) + args.overrides
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        run_cli("fit", args.config.resolve(), workdir, overrides, recorder, args.every)
        if not args.no_test:
            run_cli("test", args.config.resolve(), workdir, overrides, recorder)
    loaded_after = [name for name in HEAVY if name in sys.modules]
    report: dict[str, Any] = {
        "config": str(args.config),
        "smoke": args.smoke,
        "stages": recorder.rows,
        "peak_mb": round(peak_mb(), 1),
        "heavy_modules_after_cli_import": loaded,
        "heavy_modules_after_run": loaded_after,
    }
    if args.imports:
        report["import_costs"] = import_costs()
    text = markdown(recorder.rows)
    print("\n" + text)
    print(f"\npeak RSS {report['peak_mb']} MB")
    print(f"heavy modules imported by `import hycam_pl.cli`: {', '.join(loaded) or 'none'}")
    print(f"heavy modules imported by the end of the run: {', '.join(loaded_after) or 'none'}")
    for row in report.get("import_costs", []):
        print(f"import {row['library']}: +{row['import_mb']} MB (over torch + lightning + transformers)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
