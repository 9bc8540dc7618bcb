"""Data path costs: padding with and without length grouping, loader throughput, and Lightning's loop overhead.

1. A realistic multi-task length mix: the four short synthetic tasks next to long chain-of-thought answers
   (``../shared/data/auto-cot.json`` when present, else the synthetic tasks alone), byte tokenizer. For one epoch of
   training batches it reports the fraction of padded tokens and the loader's batches/s, without length grouping
   and with ``length_grouping`` G.
2. The same HyCAM model and the same batches trained by ``lightning.Trainer.fit`` (``MultiTaskLM``: logging,
   non-finite checks, step-level loss normalisation) and by a bare PyTorch loop (forward, loss, backward, AdamW),
   interleaved over rounds; the ratio of median time per step is Lightning's overhead.

    python benchmarks/data.py                # full run (a few minutes on 2 CPU cores)
    python benchmarks/data.py --smoke        # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import HyCAMMethod
from hycam_pl.training import MultiTaskLM

REPO = Path(__file__).resolve().parents[1]
AUTO_COT = REPO.parent / "shared" / "data" / "auto-cot.json"
BACKBONE = dict(
    model_type="llama", vocab_size=384, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0,
    tie_word_embeddings=True,
)  # fmt: skip


def tasks(examples: int, long_examples: int) -> list[dict]:
    mix = [
        {"name": name, "source": "synthetic", "path": name, "num_examples": examples}
        for name in ("arithmetic", "code", "qa", "list_ops")
    ]
    if AUTO_COT.is_file() and long_examples:
        mix.append(
            {"name": "auto_cot", "source": "json", "path": str(AUTO_COT), "max_examples": long_examples}
        )
    return mix


def datamodule(args: argparse.Namespace, grouping: int, cache: str) -> MultiTaskDataModule:
    data = MultiTaskDataModule(
        tasks=tasks(args.examples, args.long_examples),
        tokenizer="byte",
        max_length=args.max_length,
        batch_size=args.batch_size,
        sampling="proportional",
        cache_dir=cache,
        length_grouping=grouping,
    )
    data.prepare_data()
    data.setup("fit")
    return data


def padding_and_throughput(data: MultiTaskDataModule) -> dict:
    start = time.perf_counter()
    real = padded = batches = 0
    for batch in data.train_dataloader():
        mask = batch["attention_mask"]
        real += int(mask.sum())
        padded += mask.numel()
        batches += 1
    seconds = time.perf_counter() - start
    return dict(
        padded_fraction=1 - real / padded,
        batches=batches,
        batches_per_s=batches / seconds,
        real_tokens_per_s=real / seconds,
    )


class _StepClock(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()
        self.steps = batch_idx + 1 - self.warmup


def model() -> MultiTaskLM:
    torch.manual_seed(0)
    return MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=4, rank=8), learning_rate=1e-3)


def lightning_seconds_per_step(data: MultiTaskDataModule, steps: int, warmup: int, root: str) -> float:
    clock = _StepClock(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=root,
    )
    trainer.fit(model(), datamodule=data)
    return (clock.end - clock.start) / clock.steps


def bare_seconds_per_step(data: MultiTaskDataModule, steps: int, warmup: int) -> float:
    module = model()
    lm = module.model.train()
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-3)
    coef = module.method.config.balance_coef
    from hycam_pl.modulation import balance_loss

    start = None
    for index, batch in enumerate(data.train_dataloader()):
        if index == warmup:
            start = time.perf_counter()
        if index == steps:
            break
        out = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        (out.loss + coef * balance_loss(lm)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (steps - warmup)


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        padding = {}
        for grouping in (0, args.grouping):
            padding[f"length_grouping={grouping}"] = padding_and_throughput(datamodule(args, grouping, tmp))
        data = datamodule(args, 0, tmp)
        times = {"lightning": [], "bare": []}
        for _ in range(args.rounds):
            times["bare"].append(bare_seconds_per_step(data, args.steps, args.warmup))
            times["lightning"].append(lightning_seconds_per_step(data, args.steps, args.warmup, tmp))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return dict(
        tasks=[t["name"] for t in tasks(args.examples, args.long_examples)],
        batch_size=args.batch_size,
        max_length=args.max_length,
        padding=padding,
        ms_per_step={k: 1e3 * v for k, v in medians.items()},
        lightning_overhead=medians["lightning"] / medians["bare"] - 1,
        rounds=args.rounds,
        steps=args.steps,
        threads=torch.get_num_threads(),
    )


def markdown(report: dict) -> str:
    lines = [
        f"tasks {', '.join(report['tasks'])}; batch {report['batch_size']}, max_length {report['max_length']}; "
        f"cpu x{report['threads']} threads",
        "",
        "| batching | padded tokens | batches/s | real tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for name, row in report["padding"].items():
        lines.append(
            f"| {name} | {100 * row['padded_fraction']:.1f}% | {row['batches_per_s']:.1f} | "
            f"{row['real_tokens_per_s']:.0f} |"
        )
    ms = report["ms_per_step"]
    lines += [
        "",
        f"training loop, medians of {report['rounds']} interleaved rounds of {report['steps']} steps: "
        f"bare PyTorch {ms['bare']:.1f} ms/step, Lightning {ms['lightning']:.1f} ms/step, "
        f"overhead {100 * report['lightning_overhead']:+.1f}%",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400, help="examples per synthetic task")
    parser.add_argument("--long-examples", type=int, default=400, help="auto-cot examples (0: none)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grouping", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples, args.long_examples, args.steps, args.warmup, args.rounds = 24, 24, 3, 1, 1
        args.max_length = 256
    report = run(args)
    table = markdown(report)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n")
    return report


if __name__ == "__main__":
    main()
