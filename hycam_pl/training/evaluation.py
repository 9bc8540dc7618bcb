"""Evaluation beyond the teacher-forced loss: generation (batched left-padded prompts decoded with the module's
settings), generation metrics over a datamodule's generation sample, the test report, and the prediction file.

Why apart from the Lightning module: these are the model's uses at evaluation time, independent of how it is
trained; the module's hooks call them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hycam_pl.io import write_text_atomically
from hycam_pl.metrics import format_results_table, write_examples, write_results
from hycam_pl.modulation import find_state, routing_statistics, without_routing_records
from hycam_pl.training.sharding import needs_synced_generation, synchronised_batches


@dataclass
class GenerationSettings:
    """How evaluation and ``predict`` generate: batched left-padded prompts, ``data.eval_batch_size`` at a time."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    every_n_validations: int = 0  # 0: generation metrics only in ``test``; N: also every N-th validation
    rouge_stemmer: bool = True  # ROUGE with the Porter stemmer, as most papers report it

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"model.generation.max_new_tokens={self.max_new_tokens} must be >= 1")


@torch.no_grad()
def generate_ids(module: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy or sampled continuations of a left-padded prompt batch: (prompt + new ids, their mask).

    The mask covers the prompt's real tokens and the new tokens up to and including the first EOS.
    """
    tokenizer = module.datamodule.tokenizer
    settings: GenerationSettings = module.generation
    input_ids = batch["input_ids"].to(module.device)
    attention_mask = batch["attention_mask"].to(module.device)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    if module._trainer is not None and needs_synced_generation(module.trainer):
        kwargs["synced_gpus"] = True  # sharded weights: every rank runs every step until all are done
    with without_routing_records(module.model):
        output = module.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    new = output[:, input_ids.shape[1] :]
    is_eos = (new == tokenizer.eos_token_id).long()
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
    return output, torch.cat([attention_mask, (~after_eos).long()], dim=1)


def decode_new(module: Any, batch: dict[str, Any], output: torch.Tensor) -> list[str]:
    """The continuations after the prompt, decoded without special tokens."""
    prompt_length = batch["input_ids"].shape[1]
    return module.datamodule.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)


def score_generations(module: Any, stage: str, metrics: Any) -> None:
    """Generate for the datamodule's generation sample of ``stage`` and score it into ``metrics``."""
    data = module.datamodule
    if data is None or not hasattr(data, "generation_dataloader"):
        raise ValueError(
            f"{stage} with generation scoring needs a MultiTaskDataModule (trainer.{stage}(model, datamodule=...)); "
            "plain dataloaders carry no prompts and references"
        )
    loader = data.generation_dataloader(stage)
    was_training = module.model.training
    module.model.eval()
    for batch, real in synchronised_batches(loader, module):
        output, _ = generate_ids(module, batch)
        predictions = decode_new(module, batch, output)
        if real:  # a padding batch only keeps this rank in step with the others (sharded weights)
            metrics.update_generation_by_id(
                batch["task_ids"], predictions, batch["references"], batch.get("example_ids")
            )
    module.model.train(was_training)


def prediction_records(module: Any, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per prompt: task, prompt, response, and for a routed model its expert load."""
    output, mask = generate_ids(module, batch)
    responses = decode_new(module, batch, output)
    routing = routing_summaries(module.model, output, mask)
    records = []
    for i, response in enumerate(responses):
        record = {"task": batch["tasks"][i], "prompt": batch["prompts"][i], "response": response}
        if routing is not None:
            record["routing"] = routing[i]
        records.append(record)
    return records


@torch.no_grad()
def routing_summaries(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[dict[str, Any]] | None:
    """Per example: the mean expert load over layers on exactly the generated prompt + response tokens (None
    for a model without a router)."""
    state = find_state(model, required=False)
    if state is None or not getattr(state.config, "num_experts", 0):
        return None
    model(input_ids=ids, attention_mask=mask, use_cache=False)
    stats = routing_statistics(model)
    loads = torch.stack(
        [s.example_gate_sum / s.example_tokens.clamp_min(1).unsqueeze(-1) for s in stats.values()]
    )
    return [
        {"expert_load": [round(float(v), 4) for v in row], "top_expert": int(row.argmax())}
        for row in loads.mean(0).cpu()
    ]


def write_predictions(module: Any, records: list[dict[str, Any]]) -> None:
    """Every rank's predictions, in file order, written by rank 0 to ``model.predict_output`` (default
    ``<log dir>/predictions.jsonl``)."""
    run_dir = module.run_dir()
    path = module.hparams.predict_output or (
        os.path.join(run_dir, "predictions.jsonl") if run_dir else "predictions.jsonl"
    )
    trainer = module.trainer
    if trainer.world_size > 1:  # each rank predicted a shard; rank 0 writes them all
        parts: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, records)
        # Lightning's predict sampler gives rank r the items r, r + W, ...: interleave back to file order.
        records = [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]
    if trainer.is_global_zero:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"Wrote {len(records)} predictions to {path}")


def report_test_results(results: dict[str, Any], examples: list[Any], run_dir: str) -> None:
    """``results.json``/``results.md`` (and ``examples.jsonl`` when batches carry example ids) in the run
    directory, and the per-task table on stdout."""
    json_path, md_path = write_results(results, run_dir)
    where = f"{json_path}, {md_path}"
    if examples:  # batches from MultiTaskDataModule carry example ids; plain loaders may not
        where += f"; per example: {write_examples(examples, run_dir)}"
    print(f"\nPer-task test results ({where}):")
    print(format_results_table(results))
