"""The configuration of one task, shaped like the YAML that declares it.

LightningCLI builds these from ``tasks: [{name: ..., source: ..., path: ...}, ...]``; every check runs in
``__post_init__`` so a typo fails when the config is read, naming the task, the field and the choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from hycam_pl.data.example_ids import ID_FIELD
from hycam_pl.data.records import RECORD_FIELDS
from hycam_pl.data.scorers import scorer_names
from hycam_pl.data.synthetic import SYNTHETIC_KINDS, SYNTHETIC_SCORERS

SOURCES = ("json", "jsonl", "parquet", "csv", "hf", "synthetic")
PROMPT_FORMATS = ("alpaca", "chat", "template")
BAD_RECORD_POLICIES = ("error", "skip")
SPLITS = ("train", "validation", "test")

SourceName = Literal["json", "jsonl", "parquet", "csv", "hf", "synthetic"]
PromptFormat = Literal["alpaca", "chat", "template"]
BadRecordPolicy = Literal["error", "skip"]


@dataclass
class TaskConfig:
    """One task of the multi-task mixture.

    Args:
        name: unique task name, used in logs, metrics and ``task`` fields of predict files.
        source: ``json`` (a list of records), ``jsonl``, ``parquet``, ``csv``, ``hf`` (Hugging Face
            ``datasets``: hub name, cached name or local dataset directory) or ``synthetic``.
        path: the file, the HF dataset name/directory, or for ``synthetic`` the kind:
            ``arithmetic`` | ``code`` | ``qa`` | ``list_ops``.
        hf_config: HF dataset configuration name (``source: hf`` only).
        hf_split: HF split to read (``source: hf`` only); our own train/validation/test split follows.
        fields: maps ``instruction``/``input``/``output`` to source column names; unnamed fields map to
            themselves. ``input`` may be absent from the data unless it is mapped explicitly. ``id`` names a
            column holding each record's own example id (unique strings or integers); without it, ids are
            derived from the task name, the record's index and its content (:mod:`hycam_pl.data.example_ids`).
        prompt_format: ``alpaca`` (Stanford Alpaca template, METHOD.md §5), ``chat`` (the tokenizer's chat
            template) or ``template`` (``template`` below).
        template: a prompt with ``{instruction}`` and optionally ``{input}`` placeholders.
        split_ratios: train/validation/test fractions of the shuffled records; they may sum to less than 1
            (the rest is unused, e.g. the reference's 7:2 split is ``(0.7, 0.2, 0.0)``).
        max_examples: keep at most this many records (a seeded random subset), before splitting.
        num_examples: number of generated records (``synthetic`` only).
        seed: seed of the shuffle/split (and of the generator for ``synthetic``); the reference used 2333.
        scorer: name of the generation scorer (see :func:`hycam_pl.data.get_scorer`); defaults to the
            synthetic task's own scorer, else ``exact_match``.
        on_bad_record: ``error`` raises :class:`~hycam_pl.data.DataError` on the first bad record;
            ``skip`` drops bad records and counts them in the data report.
    """

    name: str
    source: SourceName
    path: str
    hf_config: str | None = None
    hf_split: str = "train"
    fields: dict[str, str] | None = None
    prompt_format: PromptFormat = "alpaca"
    template: str | None = None
    split_ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)
    max_examples: int | None = None
    num_examples: int = 1000
    seed: int = 2333
    scorer: str | None = None
    on_bad_record: BadRecordPolicy = "error"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        self._check_choice("source", self.source, SOURCES)
        if not isinstance(self.path, str) or not self.path.strip():
            raise self._error("path", f"must be a non-empty string, got {self.path!r}")
        if self.source == "synthetic":
            self._check_choice("path", self.path, SYNTHETIC_KINDS, what="synthetic kind")
        self._check_fields()
        self._check_choice("prompt_format", self.prompt_format, PROMPT_FORMATS)
        self._check_template()
        self._check_split_ratios()
        if self.max_examples is not None and (
            not isinstance(self.max_examples, int) or self.max_examples < 1
        ):
            raise self._error(
                "max_examples", f"must be a positive integer or null, got {self.max_examples!r}"
            )
        if not isinstance(self.num_examples, int) or self.num_examples < 1:
            raise self._error("num_examples", f"must be a positive integer, got {self.num_examples!r}")
        if self.scorer is None:
            self.scorer = SYNTHETIC_SCORERS[self.path] if self.source == "synthetic" else "exact_match"
        self._check_choice("scorer", self.scorer, tuple(scorer_names()), what="registered scorer")
        self._check_choice("on_bad_record", self.on_bad_record, BAD_RECORD_POLICIES)

    @property
    def column_for(self) -> dict[str, str]:
        """Source column of each record field (identity unless ``fields`` says otherwise)."""
        return {field: (self.fields or {}).get(field, field) for field in RECORD_FIELDS}

    @property
    def input_mapped_explicitly(self) -> bool:
        """True when ``fields`` names the input column, which then must exist in the data."""
        return "input" in (self.fields or {})

    def _error(self, field: str, problem: str) -> ValueError:
        return ValueError(f"task '{self.name}': {field} {problem}")

    def _check_choice(self, field: str, value: object, allowed: tuple[str, ...], what: str = "") -> None:
        if value not in allowed:
            label = f"{what} " if what else ""
            raise self._error(field, f"{label}{value!r} is not one of: {', '.join(allowed)}")

    def _check_fields(self) -> None:
        if self.fields is None:
            return
        if not isinstance(self.fields, dict):
            raise self._error("fields", f"must be a mapping of record field to column, got {self.fields!r}")
        for field, column in self.fields.items():
            if field not in (*RECORD_FIELDS, ID_FIELD):
                raise self._error(
                    "fields", f"key {field!r} is not one of: {', '.join((*RECORD_FIELDS, ID_FIELD))}"
                )
            if not isinstance(column, str) or not column:
                raise self._error(
                    "fields", f"column for {field!r} must be a non-empty string, got {column!r}"
                )

    def _check_template(self) -> None:
        if self.prompt_format == "template":
            if not isinstance(self.template, str) or "{instruction}" not in self.template:
                raise self._error(
                    "template", "must be a string containing '{instruction}' when prompt_format is 'template'"
                )
        elif self.template is not None:
            raise self._error(
                "template",
                f"is only used with prompt_format 'template' (prompt_format is '{self.prompt_format}')",
            )

    def _check_split_ratios(self) -> None:
        ratios = self.split_ratios
        if not isinstance(ratios, (list, tuple)) or len(ratios) != len(SPLITS):
            raise self._error(
                "split_ratios", f"must be three numbers (train, validation, test), got {ratios!r}"
            )
        if not all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for r in ratios):
            raise self._error("split_ratios", f"must be non-negative numbers, got {ratios!r}")
        total = sum(ratios)
        if total <= 0 or total > 1 + 1e-6:
            raise self._error("split_ratios", f"must sum to a value in (0, 1], got {total:g} from {ratios!r}")
        self.split_ratios = tuple(float(r) for r in ratios)
