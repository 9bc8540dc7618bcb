"""``MultiTaskDataModule``: tasks in, multi-task training/eval/generation/predict batches out.

Stages: load and validate each task's records → seeded split → tokenise (cached) → one sampled training
stream over all tasks, one eval loader per split (tasks interleaved), and a fixed per-task generation sample.

Resuming: ``state_dict`` records the epoch and the number of training batches the trainer has *actually
trained* in it (Lightning's own progress counters; the sampler's count runs ahead because batches are
fetched before they are used). ``load_state_dict`` makes the next training iteration skip exactly those
batches, so a run resumed from a mid-epoch checkpoint sees the same remaining batches.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from hycam_pl.data.collate import GenerationCollator, TrainCollator
from hycam_pl.data.eval_order import EvalShardSampler, interleaved_order, tasks_left_out
from hycam_pl.data.examples import TaskExamples, prompt_items
from hycam_pl.data.predict import load_predict_records
from hycam_pl.data.prompts import build_prompt, check_chat_template
from hycam_pl.data.report import DataReport, SplitReport, TaskReport
from hycam_pl.data.sampler import SAMPLING_POLICIES, MultiTaskBatchSampler, SampledBatch, task_probabilities
from hycam_pl.data.scorers import Scorer, get_scorer
from hycam_pl.data.sources import load_task_records
from hycam_pl.data.splits import split_indices
from hycam_pl.data.task import SPLITS, TaskConfig
from hycam_pl.data.tokenize import (
    IGNORE_INDEX,
    TokenizeSettings,
    tokenize_prompts,
    tokenize_task,
    tokenizer_fingerprint,
)
from hycam_pl.data.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 1
_STAGE_SPLITS = {"validate": "validation", "validation": "validation", "val": "validation", "test": "test"}


class _ResumableDataLoader(DataLoader):
    """The training ``DataLoader``; its resume position is kept by :class:`MultiTaskDataModule`.

    Having ``state_dict``/``load_state_dict`` tells Lightning the loader is resumable, so it does not
    warn that a mid-epoch resume is unreliable; the state itself lives in the datamodule's checkpoint entry.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class _TrainExamples(TaskExamples):
    """Training examples fetched a batch at a time, keeping the batch's loss-normaliser ``window``."""

    def __getitems__(self, indices: list[int]) -> SampledBatch:
        return SampledBatch([self[index] for index in indices], getattr(indices, "window", None))


@dataclass
class _WindowCollator:
    """``TrainCollator`` plus ``loss_tokens``/``loss_examples``: the totals of the batch's optimizer step
    over all micro-batches and ranks, which ``MultiTaskLM`` divides the summed task loss by."""

    collate: TrainCollator

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.collate(items)
        window = getattr(items, "window", None)
        if window is not None:
            batch["loss_tokens"] = torch.tensor(window[0], dtype=torch.long)
            batch["loss_examples"] = torch.tensor(window[1], dtype=torch.long)
        return batch


class MultiTaskDataModule(LightningDataModule):
    """Multi-task instruction data for CAM/HyCAM training.

    Args:
        tasks: the task mixture (``TaskConfig`` objects or equivalent dicts); task ids follow this order.
        tokenizer: ``"byte"``, a local tokenizer directory or a cached Hub name (see ``load_tokenizer``).
        max_length: maximum tokens of prompt + response + EOS.
        max_prompt_length: left-truncate longer prompts to this many tokens (default: never truncate
            prompts; examples whose prompt leaves no room for a response token are dropped and counted).
        batch_size: training examples per batch per device.
        eval_batch_size: validation/test/generation/predict batch size (default ``batch_size``).
        sampling: ``proportional`` | ``uniform`` | ``temperature`` (see ``MultiTaskBatchSampler``).
        temperature: ``T`` of ``temperature`` sampling.
        samples_per_epoch: training examples per epoch over all devices (default: all training examples).
        loss_on: ``response`` (prompt labels are -100) or ``all`` (the reference's behaviour).
        pad_to_multiple_of: round padded lengths up to a multiple of this (e.g. 8 for tensor cores).
        num_workers: ``DataLoader`` workers.
        cache_dir: where tokenised splits are cached (``None`` disables the cache).
        seed: seed of the training order. Task splits and the generation sample use each task's own seed,
            so runs with different ``seed`` train in different orders on the same examples and are evaluated on
            the same ones (a sweep sets it to each trial's seed).
        predict_file: JSON/JSONL prompts for ``predict_dataloader``.
        generation_samples_per_task: size of the fixed per-task sample of validation/test examples that
            ``generation_dataloader`` returns for generation-based scoring.
        length_grouping: 0 (off) or G: sort each run of G global training batches by length before cutting
            batches (less padding when short and long answers mix; see ``MultiTaskBatchSampler``).
    """

    def __init__(
        self,
        tasks: list[TaskConfig],
        tokenizer: str = "byte",
        max_length: int = 256,
        max_prompt_length: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        sampling: Literal["proportional", "uniform", "temperature"] = "proportional",
        temperature: float = 2.0,
        samples_per_epoch: int | None = None,
        loss_on: Literal["response", "all"] = "response",
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = ".hycam_cache/tokenized",
        seed: int = 2333,
        predict_file: str | None = None,
        generation_samples_per_task: int = 32,
        length_grouping: int = 0,
    ) -> None:
        super().__init__()
        self.tasks = task_configs(tasks)
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        names = [task.name for task in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        if sampling not in SAMPLING_POLICIES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_POLICIES)}, got {sampling!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive or null, got {samples_per_epoch}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive or null, got {pad_to_multiple_of}")
        if generation_samples_per_task < 0:
            raise ValueError(f"generation_samples_per_task must be >= 0, got {generation_samples_per_task}")
        if not isinstance(length_grouping, int) or length_grouping < 0:
            raise ValueError(f"length_grouping must be an integer >= 0, got {length_grouping!r}")
        self.settings = TokenizeSettings(
            max_length=max_length, loss_on=loss_on, max_prompt_length=max_prompt_length
        )
        self.tokenizer_name = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.sampling = sampling
        self.temperature = temperature
        self.samples_per_epoch = samples_per_epoch
        self.pad_to_multiple_of = pad_to_multiple_of
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.seed = seed
        self.predict_file = predict_file
        self.generation_samples_per_task = generation_samples_per_task
        self.length_grouping = length_grouping

        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._splits: dict[str, list[Any]] | None = None  # split -> per-task tokenised datasets
        self._report: DataReport | None = None
        self._generation_items: dict[str, list[dict[str, Any]]] = {}
        self._train_sampler: MultiTaskBatchSampler | None = None
        self._pending_resume: tuple[int, int] | None = None
        self._loss_tokens: list[int] | None = None
        self._coverage_warned: set[str] = set()

    # ------------------------------------------------------------------ what the model side reads
    @property
    def task_names(self) -> list[str]:
        """Task names in task-id order."""
        return [task.name for task in self.tasks]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (loaded on first use, so a model can size its embeddings before ``setup``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name, padding_side="right")
        return self._tokenizer

    @property
    def scorers(self) -> dict[str, Scorer]:
        """Task name → generation scorer ``(prediction, reference) -> float`` (module-level, picklable)."""
        return {task.name: get_scorer(task.scorer) for task in self.tasks}

    @property
    def report(self) -> DataReport:
        """Per-task counts of records, skips, examples per split, truncations and drops (after ``setup``)."""
        self._require_setup()
        assert self._report is not None
        return self._report

    @property
    def sampling_probabilities(self) -> dict[str, float]:
        """Task name → probability that a training example is drawn from it (after ``setup``)."""
        probabilities = task_probabilities(self._train_sizes(), self.sampling, self.temperature)
        return dict(zip(self.task_names, probabilities.tolist()))

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Tokenise once into the cache (local rank 0 only, before the other ranks' ``setup``)."""
        if self.cache_dir is not None:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise every task (all splits at once; later calls are no-ops)."""
        if self._splits is None:
            self._splits, self._report, self._generation_items = self._build()
            rank_zero_info(f"multi-task data (max_length={self.settings.max_length}):\n{self._report}")

    def train_dataloader(self) -> DataLoader:
        """Batches from :class:`MultiTaskBatchSampler` over all tasks' training splits."""
        self._require_setup()
        world_size, rank = self._world()
        num_batches = self._batches_per_epoch()
        epoch, batch = self._start_position()
        accumulate, epoch_batches = self._trainer_schedule(num_batches)
        self._train_sampler = MultiTaskBatchSampler(
            self._train_sizes(),
            self.batch_size,
            policy=self.sampling,
            temperature=self.temperature,
            num_batches=num_batches,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            start_epoch=epoch,
            start_batch=batch,
            example_tokens=self._train_loss_tokens(),
            accumulate=accumulate,
            epoch_batches=epoch_batches,
            length_grouping=self.length_grouping,
            example_lengths=self._train_lengths() if self.length_grouping else None,
        )
        return _ResumableDataLoader(
            _TrainExamples(self._splits_of("train")),
            batch_sampler=self._train_sampler,
            collate_fn=_WindowCollator(self._train_collator()),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        """One loader over every task's validation split, the tasks interleaved so that a limited validation
        covers every task (:mod:`hycam_pl.data.eval_order`); batches carry ``task_ids`` and ``example_ids``."""
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader | list:
        """One loader over every task's test split, interleaved like ``val_dataloader``."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Left-padded prompts of ``predict_file`` (see :class:`GenerationCollator` for the batch keys)."""
        if self.predict_file is None:
            raise ValueError("predict_dataloader needs predict_file (a JSON or JSONL file of prompts)")
        records = load_predict_records(self.predict_file, self.task_names)
        by_name = {task.name: (task_id, task) for task_id, task in enumerate(self.tasks)}
        prompts, items = [], []
        for record in records:
            task_id, task = by_name.get(record["task"], (-1, self.tasks[0]))
            prompts.append(build_prompt(record, task.prompt_format, self.tokenizer, task.template))
            items.append({"task": record["task"], "task_id": task_id, "reference": record["output"]})
        limit = self.settings.max_prompt_length or self.settings.max_length
        prompt_ids, truncated = tokenize_prompts(prompts, self.tokenizer, limit)
        if truncated:
            log.warning(
                "predict_file: %d of %d prompts left-truncated to %d tokens", truncated, len(prompts), limit
            )
        for item, ids, prompt in zip(items, prompt_ids, prompts):
            item.update(prompt_ids=ids, prompt=prompt)
        return DataLoader(
            items, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._generation_collator()
        )

    def generation_dataloader(self, stage: str = "validate", shard: bool = True) -> DataLoader:
        """Left-padded prompts of the fixed generation sample of ``stage`` (``validate`` or ``test``).

        The sample (``generation_samples_per_task`` examples per task, chosen with ``seed``) is the same
        in every call and every run. Batches: ``input_ids``, ``attention_mask``, ``task_ids`` tensors and
        ``prompts``, ``references``, ``tasks`` lists. With ``shard`` and several processes, rank ``r`` gets
        items ``r::world_size`` (no duplicates, so per-rank metric states can simply be summed).
        """
        self._require_setup()
        split = _STAGE_SPLITS.get(stage)
        if split is None:
            raise ValueError(f"stage must be one of {', '.join(_STAGE_SPLITS)}, got {stage!r}")
        items = self._generation_items[split]
        world_size, rank = self._world()
        if shard and world_size > 1:
            items = items[rank::world_size]
        return DataLoader(
            items, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._generation_collator()
        )

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """The training position (epoch, batches trained in it) and what it depends on."""
        epoch, batch = self._training_position()
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "batch": batch,
            "seed": self.seed,
            "task_names": self.task_names,
            "train_sizes": self._train_sizes() if self._splits is not None else None,
            "batch_size": self.batch_size,
            "world_size": self._world()[0],
            **self._mixture(),
        }

    def _mixture(self) -> dict[str, Any]:
        """What decides the task mixture and the epoch length (recorded so a resume can compare)."""
        return {
            "sampling": self.sampling,
            "temperature": self.temperature,
            "samples_per_epoch": self.samples_per_epoch,
            "batches_per_epoch": self._batches_per_epoch() if self._splits is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order at the saved position (applied when the training loader is built)."""
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported MultiTaskDataModule state version {state_dict.get('version')!r}")
        current = {
            "seed": self.seed,
            "task_names": self.task_names,
            "batch_size": self.batch_size,
            "world_size": self._world()[0],
        }
        if self._splits is not None:
            current["train_sizes"] = self._train_sizes()
        mixture = self._mixture()
        if "temperature" not in (self.sampling, state_dict.get("sampling")):
            mixture.pop("temperature")  # only the temperature policy reads it
        if mixture["batches_per_epoch"] is None or state_dict.get("batches_per_epoch") is None:
            mixture.pop("batches_per_epoch")
        current.update(mixture)
        # Keys an older checkpoint did not record cannot be compared.
        changed = [key for key, value in current.items() if key in state_dict and state_dict[key] != value]
        if changed:
            details = ", ".join(f"{key} {state_dict[key]!r} -> {current[key]!r}" for key in changed)
            log.warning(
                "MultiTaskDataModule: resuming with a different %s (checkpoint -> now); the remaining batches "
                "(their task mixture and the epoch length) will differ from those of the interrupted run, "
                "so the result is not that of one uninterrupted run",
                details,
            )
        position = (int(state_dict["epoch"]), int(state_dict["batch"]))
        self._pending_resume = position
        # the loader may already exist (e.g. built early by trainer.estimated_stepping_batches)
        for sampler in self._live_train_samplers():
            sampler.start_at(*position)

    # ------------------------------------------------------------------ internals
    def _build(self) -> tuple[dict[str, list[Any]], DataReport, dict[str, list[dict[str, Any]]]]:
        tokenizer = self.tokenizer
        tokenizer_key = tokenizer_fingerprint(tokenizer)
        cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir is not None else None
        splits: dict[str, list[Any]] = {split: [] for split in SPLITS}
        report = DataReport()
        generation: dict[str, list[dict[str, Any]]] = {"validation": [], "test": []}
        for task_id, task in enumerate(self.tasks):
            if task.prompt_format == "chat":
                check_chat_template(tokenizer, task.name)
            loaded = load_task_records(task)
            indices = split_indices(len(loaded.records), task.split_ratios, task.seed, task.max_examples)
            tokenized = tokenize_task(
                task.name,
                {split: [loaded.records[i] for i in part] for split, part in indices.items()},
                tokenizer,
                self.settings,
                prompt_format=task.prompt_format,
                template=task.template,
                cache_dir=cache_dir,
                tokenizer_key=tokenizer_key,
                ids={split: [loaded.ids[i] for i in part] for split, part in indices.items()},
            )
            report.tasks[task.name] = TaskReport(
                name=task.name,
                origin=loaded.origin,
                records=len(loaded.records),
                skipped=loaded.skipped,
                skip_reasons=loaded.skip_reasons,
                splits={
                    split: SplitReport(part.total, len(part), part.truncated, part.dropped)
                    for split, part in tokenized.items()
                },
            )
            for split in SPLITS:
                splits[split].append(tokenized[split].dataset)
            for split in generation:
                part = tokenized[split].dataset
                generation[split].extend(
                    prompt_items(part, task.name, task_id, self._generation_sample(task, len(part)))
                )
        return splits, report, generation

    def _generation_sample(self, task: TaskConfig, size: int) -> list[int]:
        """Seeded by the task's own seed (that of its split), not ``data.seed``: runs whose training order
        differs still generate for the same examples, so their scores pair example by example."""
        count = min(self.generation_samples_per_task, size)
        rng = np.random.default_rng([task.seed % 2**63, zlib.crc32(task.name.encode())])
        return sorted(rng.choice(size, size=count, replace=False).tolist())

    def _require_setup(self) -> None:
        if self._splits is None:
            raise RuntimeError("MultiTaskDataModule.setup() must run first (Lightning calls it for you)")

    def _splits_of(self, split: str) -> list[Any]:
        self._require_setup()
        assert self._splits is not None
        return self._splits[split]

    def _train_sizes(self) -> list[int]:
        return [len(part) for part in self._splits_of("train")]

    def _eval_loader(self, split: str) -> DataLoader | list:
        parts = self._splits_of(split)
        if not any(len(part) for part in parts):
            log.warning("no task has %s examples; the %s loop is skipped", split, split)
            return []
        examples = TaskExamples(parts)
        world_size, rank = self._world()
        self._warn_tasks_left_out(split, examples.sizes, world_size)
        return DataLoader(
            examples,
            batch_size=self.eval_batch_size,
            sampler=EvalShardSampler(interleaved_order(examples.sizes), world_size, rank),
            collate_fn=self._train_collator(),
            num_workers=self.num_workers,
        )

    def _warn_tasks_left_out(self, split: str, sizes: list[int], world_size: int) -> None:
        """One warning per split naming the tasks that ``trainer.limit_<split>_batches`` leaves without any
        example, although the evaluation order interleaves the tasks (:mod:`hycam_pl.data.eval_order`)."""
        option = {"validation": "limit_val_batches", "test": "limit_test_batches"}[split]
        limit = getattr(self._trainer_or_none(), option, None)
        if limit is None or limit == 0 or split in self._coverage_warned:
            return
        left_out, needed = tasks_left_out(sizes, self.eval_batch_size, world_size, limit)
        if left_out:
            self._coverage_warned.add(split)
            names = ", ".join(f"'{self.task_names[task]}'" for task in left_out)
            log.warning(
                "trainer.%s=%s evaluates no %s example of task(s) %s, so the %s metrics and their macro mean "
                "leave them out; with data.eval_batch_size=%d on %d process(es), %s >= %d covers every task",
                option,
                limit,
                split,
                names,
                split,
                self.eval_batch_size,
                world_size,
                option,
                needed,
            )

    def _train_collator(self) -> TrainCollator:
        return TrainCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def _generation_collator(self) -> GenerationCollator:
        return GenerationCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def _batches_per_epoch(self) -> int:
        """Training batches per epoch and rank (what ``MultiTaskBatchSampler`` gets as ``num_batches``)."""
        examples = self.samples_per_epoch if self.samples_per_epoch is not None else sum(self._train_sizes())
        return max(1, examples // (self.batch_size * self._world()[0]))

    def _train_loss_tokens(self) -> list[int]:
        """Loss tokens of every training example (as ``per_example_nll`` counts them: labels shifted by one)."""
        if self._loss_tokens is None:
            self._loss_tokens = [
                sum(1 for label in labels[1:] if label != IGNORE_INDEX)
                for part in self._splits_of("train")
                for labels in part["labels"]
            ]
        return self._loss_tokens

    def _train_lengths(self) -> list[int]:
        """Sequence length of every training example, in the sampler's concatenation order."""
        return [len(ids) for part in self._splits_of("train") for ids in part["input_ids"]]

    def _trainer_schedule(self, num_batches: int) -> tuple[int, int]:
        """(micro-batches per optimizer step, batches per epoch the trainer runs) for ``num_batches``."""
        trainer = self._trainer_or_none()
        if trainer is None:
            return 1, num_batches
        accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        limit = getattr(trainer, "limit_train_batches", None)
        if isinstance(limit, int) and not isinstance(limit, bool):
            return accumulate, max(1, min(num_batches, limit))
        if isinstance(limit, float):
            return accumulate, max(1, min(num_batches, int(num_batches * limit)))
        return accumulate, num_batches

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _trainer_or_none(self) -> Any:
        return getattr(self, "trainer", None)

    def _trainer_epoch(self) -> int:
        trainer = self._trainer_or_none()
        return int(trainer.current_epoch) if trainer is not None else 0

    def _start_position(self) -> tuple[int, int]:
        """Where a new training loader starts: the restored position until training has moved past it."""
        current = self._trainer_epoch()
        if self._pending_resume is not None and self._pending_resume[0] >= current:
            return self._pending_resume
        return current, 0

    def _training_position(self) -> tuple[int, int]:
        """(epoch, batches of it trained) from the fit loop's progress counters when fitting.

        ``batch_progress.current.processed`` counts batches whose ``training_step`` ran, including the
        one whose ``on_train_batch_end`` is saving this checkpoint (``completed`` lags it by one there).
        Once an epoch's end hooks run, ``epoch_progress.processed`` moves on and the position is the next
        epoch's start.
        """
        trainer = self._trainer_or_none()
        if (
            trainer is not None
            and getattr(trainer.state, "fn", None) == "fit"
            and self._train_sampler is not None
        ):
            epochs = trainer.fit_loop.epoch_progress.current
            in_epoch = epochs.started > epochs.processed
            batch = trainer.fit_loop.epoch_loop.batch_progress.current.processed if in_epoch else 0
            return int(epochs.processed), int(batch)
        if self._train_sampler is not None:
            return self._train_sampler.position
        return self._pending_resume or (0, 0)

    def _live_train_samplers(self) -> list[MultiTaskBatchSampler]:
        samplers = [self._train_sampler] if self._train_sampler is not None else []
        trainer = self._trainer_or_none()
        combined = getattr(getattr(trainer, "fit_loop", None), "_combined_loader", None) if trainer else None
        for loader in getattr(combined, "flattened", []) or []:
            sampler = getattr(loader, "batch_sampler", None)
            if isinstance(sampler, MultiTaskBatchSampler) and sampler not in samplers:
                samplers.append(sampler)
        return samplers


def task_configs(tasks: Sequence[TaskConfig | Mapping[str, Any]]) -> list[TaskConfig]:
    """Coerce plain dicts (e.g. from YAML loaded by hand) into :class:`TaskConfig` objects."""
    return [task if isinstance(task, TaskConfig) else TaskConfig(**task) for task in tasks]
