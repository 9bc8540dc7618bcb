"""Multi-task instruction data: sources, prompts, tokenisation, collation, sampling, and a datamodule.

Importing this package does not import Lightning; ``MultiTaskDataModule`` is loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hycam_pl.data.collate import GenerationCollator, TrainCollator, padded_length
from hycam_pl.data.errors import DataError
from hycam_pl.data.examples import TaskExamples, prompt_items
from hycam_pl.data.predict import load_predict_records
from hycam_pl.data.prompts import (
    ALPACA_PROMPT_NO_INPUT,
    ALPACA_PROMPT_WITH_INPUT,
    alpaca_prompt,
    build_prompt,
)
from hycam_pl.data.records import Record
from hycam_pl.data.report import DataReport, SplitReport, TaskReport
from hycam_pl.data.sampler import SAMPLING_POLICIES, MultiTaskBatchSampler, task_probabilities
from hycam_pl.data.scorers import (
    Scorer,
    exact_match,
    final_number_match,
    get_scorer,
    normalized_exact_match,
    register_scorer,
    scorer_names,
    whitespace_exact_match,
)
from hycam_pl.data.sources import LoadedRecords, load_task_records
from hycam_pl.data.splits import split_records
from hycam_pl.data.synthetic import SYNTHETIC_KINDS, SYNTHETIC_SCORERS, generate_synthetic
from hycam_pl.data.task import TaskConfig
from hycam_pl.data.tokenize import (
    IGNORE_INDEX,
    TokenizedSplit,
    TokenizeSettings,
    tokenize_prompts,
    tokenize_split,
    tokenize_task,
)
from hycam_pl.data.tokenizer import BYTE_TOKENIZER, load_tokenizer

if TYPE_CHECKING:
    from hycam_pl.data.datamodule import MultiTaskDataModule

__all__ = [
    "ALPACA_PROMPT_NO_INPUT",
    "ALPACA_PROMPT_WITH_INPUT",
    "BYTE_TOKENIZER",
    "IGNORE_INDEX",
    "SAMPLING_POLICIES",
    "SYNTHETIC_KINDS",
    "SYNTHETIC_SCORERS",
    "DataError",
    "DataReport",
    "GenerationCollator",
    "LoadedRecords",
    "MultiTaskBatchSampler",
    "MultiTaskDataModule",
    "Record",
    "Scorer",
    "SplitReport",
    "TaskConfig",
    "TaskExamples",
    "TaskReport",
    "TokenizeSettings",
    "TokenizedSplit",
    "TrainCollator",
    "alpaca_prompt",
    "build_prompt",
    "exact_match",
    "final_number_match",
    "generate_synthetic",
    "get_scorer",
    "load_predict_records",
    "load_task_records",
    "load_tokenizer",
    "normalized_exact_match",
    "padded_length",
    "prompt_items",
    "register_scorer",
    "scorer_names",
    "split_records",
    "task_probabilities",
    "tokenize_prompts",
    "tokenize_split",
    "tokenize_task",
    "whitespace_exact_match",
]


def __getattr__(name: str) -> Any:
    if name == "MultiTaskDataModule":  # lazily, so importing hycam_pl.data does not import Lightning
        from hycam_pl.data.datamodule import MultiTaskDataModule

        return MultiTaskDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
