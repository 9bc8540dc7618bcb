"""What does ``RoutingTelemetry`` cost per training step? One run, three set-ups, interleaved step by step.

Trains the quickstart-shaped HyCAM model (Llama, d=128, 4 layers, K=4, batch 16 on the synthetic tasks) in a
single ``Trainer.fit``. Steps take turns: step ``g`` runs set-up ``g % 3`` -- no telemetry,
``every_n_steps=1``, or ``every_n_steps=50`` (that instance only sees every third step, so it is built with
``every_n_steps=150``, which is one log per 50 of *its* steps). Interleaving step by step makes the comparison
paired: background load and drift hit all three set-ups alike, which matters on a shared machine.

Prints, per set-up, the median wall time of a whole training step (batch start to next batch start, so every
hook is included), its ratio to the steps without telemetry, the mean time inside the telemetry hook (mean,
not median: log steps are rare spikes that a median would hide) and the median time of a log step's logging.

Then the routing views, which are drawn at each validation (two labelled matplotlib heatmaps, PNG-encoded into
the event file, and the Markdown table): the time to gather the routing of ``--val-batches`` validation batches
and render them, median of ``--view-repeats``, and what that adds to a training step when validation runs every
``--val-every`` steps (the configs' ``val_check_interval``), as a step-time ratio on top of each set-up.

    python benchmarks/telemetry_cost.py                        # CPU, about 2 minutes on 2 idle cores
    python benchmarks/telemetry_cost.py --steps 300 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from itertools import islice
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from hycam_pl.callbacks import RoutingTelemetry
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import HyCAMMethod
from hycam_pl.modulation import routing_statistics
from hycam_pl.training import MultiTaskLM

TASKS = ("arithmetic", "code", "qa", "list_ops")
SETUPS = ("no telemetry", "every_n_steps=1", "every_n_steps=50")  # step g runs SETUPS[g % 3]


class TimedTelemetry(RoutingTelemetry):
    """``RoutingTelemetry`` that records how long its logging takes."""

    def __init__(self, *args: Any, sync: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sync = sync
        self.log_times: list[float] = []

    def log_routing(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        scalars = super().log_routing(*args, **kwargs)
        if self.sync:
            torch.cuda.synchronize()
        self.log_times.append(time.perf_counter() - start)
        return scalars


class Interleaved(L.Callback):
    """Gives each step to one set-up in turn, runs only that set-up's telemetry, and times the step."""

    def __init__(self, telemetry: dict[str, RoutingTelemetry | None], warmup: int, sync: bool) -> None:
        self.telemetry = telemetry
        self.warmup = warmup
        self.sync = sync
        self.step_times: dict[str, list[float]] = {name: [] for name in telemetry}
        self.hook_times: dict[str, list[float]] = {name: [] for name in telemetry}
        self._started: tuple[str, float] | None = None

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _setup(self, trainer: L.Trainer) -> str:
        return SETUPS[trainer.global_step % len(SETUPS)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in self.telemetry.values():
            if callback is not None:
                callback.on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = self._now()
        if self._started is not None and trainer.global_step > self.warmup:
            name, start = self._started
            self.step_times[name].append(now - start)
        self._started = (self._setup(trainer), now)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        assert self._started is not None
        name = self._started[0]
        callback = self.telemetry[name]
        if callback is None:
            return
        start = self._now()
        callback.on_train_batch_end(trainer, pl_module, *args)
        if trainer.global_step > self.warmup:
            self.hook_times[name].append(self._now() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="timed steps in all (a third per set-up)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--val-every", type=int, default=100, help="validation cadence the views amortise over"
    )
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches the views gather")
    parser.add_argument("--view-repeats", type=int, default=5)
    args = parser.parse_args()
    sync = args.device == "cuda"
    L.seed_everything(2333, verbose=False)
    telemetry: dict[str, RoutingTelemetry | None] = {
        "no telemetry": None,
        "every_n_steps=1": TimedTelemetry(every_n_steps=1, sync=sync),
        "every_n_steps=50": TimedTelemetry(every_n_steps=50 * len(SETUPS), sync=sync),
    }
    # every_n_steps=150 must land on this set-up's steps: its batches end at global steps 0 mod 3
    assert SETUPS.index("every_n_steps=50") == len(SETUPS) - 1
    driver = Interleaved(telemetry, args.warmup, sync)
    backbone = {
        "model_type": "llama",
        "vocab_size": 384,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.hidden_size * 8 // 3,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    with tempfile.TemporaryDirectory() as workdir:
        data = MultiTaskDataModule(
            tasks=[{"name": t, "source": "synthetic", "path": t, "num_examples": 800} for t in TASKS],
            max_length=256,
            batch_size=args.batch_size,
            sampling="uniform",
            cache_dir=None,
        )
        model = MultiTaskLM(
            backbone, method=HyCAMMethod(num_experts=args.experts, rank=8), learning_rate=1e-3
        )
        trainer = L.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            max_steps=args.warmup + args.steps + 1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=50,
            logger=TensorBoardLogger(workdir, name="telemetry_cost"),
            callbacks=[driver],
        )
        trainer.fit(model, datamodule=data)
        views = TimedTelemetry(every_n_steps=1, sync=sync)
        view_times = time_views(views, trainer, model, data, args.val_batches, args.view_repeats, sync)

    base = statistics.median(driver.step_times["no telemetry"])
    print(
        f"\nRoutingTelemetry cost: {args.device}, {torch.get_num_threads()} threads, d={args.hidden_size}, "
        f"{args.layers} layers, K={args.experts}, batch {args.batch_size}, "
        f"{len(driver.step_times['no telemetry'])} steps per set-up, interleaved"
    )
    print(
        "| set-up | median step (ms) | ratio | telemetry hook per step, mean (ms) | log step's logging, "
        "median (ms) |\n|---|---:|---:|---:|---:|"
    )
    for name, callback in telemetry.items():
        median = statistics.median(driver.step_times[name])
        hooks = driver.hook_times[name]
        hook = f"{1000 * statistics.fmean(hooks):.2f}" if hooks else "-"
        logs = callback.log_times if isinstance(callback, TimedTelemetry) else []
        log = f"{1000 * statistics.median(logs):.2f} ({len(logs)} logs)" if logs else "-"
        print(f"| {name} | {1000 * median:.1f} | {median / base:.3f} | {hook} | {log} |")
    view = statistics.median(view_times)
    print(
        f"\nRouting views at each validation ({args.val_batches} validation batches gathered, two heatmaps + "
        f"the table rendered and written): {1000 * view:.1f} ms per validation (median of {len(view_times)}), "
        f"{1000 * view / args.val_every:.2f} ms per step with validation every {args.val_every} steps"
    )
    print("| set-up | step ratio without views | with views at every validation |\n|---|---:|---:|")
    for name in telemetry:
        median = statistics.median(driver.step_times[name])
        print(f"| {name} | {median / base:.3f} | {(median + view / args.val_every) / base:.3f} |")


def time_views(
    views: RoutingTelemetry,
    trainer: L.Trainer,
    model: MultiTaskLM,
    data: MultiTaskDataModule,
    batches: int,
    repeats: int,
    sync: bool,
) -> list[float]:
    """Seconds per validation's routing views: gather the evaluated batches' routing (the per-batch hook
    work), reduce, render both heatmaps and the table, and write them to the run's TensorBoard logger."""
    model.eval()
    loader = list(islice(data.val_dataloader(), batches))
    times = []
    for repeat in range(repeats + 1):  # the first is a warm-up (font cache, first figure)
        window = None
        elapsed = 0.0
        for batch in loader:
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.no_grad():
                model(batch["input_ids"], batch["attention_mask"])
            start = time.perf_counter()
            window = views.accumulate(routing_statistics(model.model), batch, TASKS, window)
            if sync:
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - start
        start = time.perf_counter()
        views.log_views(
            trainer, views._reduced(trainer, window), repeat, f"validation examples, step {repeat}"
        )
        elapsed += time.perf_counter() - start
        if repeat:
            times.append(elapsed)
    model.train()
    return times


if __name__ == "__main__":
    main()
