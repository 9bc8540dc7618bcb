"""Batch examples with dynamic padding: to the longest sequence of the batch, never to ``max_length``.

Training/evaluation batches are right-padded and carry labels; generation batches are left-padded so
every prompt ends at the last position, where decoder-only generation continues.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hycam_pl.data.tokenize import IGNORE_INDEX


def padded_length(lengths: Sequence[int], pad_to_multiple_of: int | None = None) -> int:
    """The longest length, rounded up to a multiple of ``pad_to_multiple_of`` when given."""
    longest = max(lengths, default=0)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return longest


def _pad(sequences: Sequence[Sequence[int]], length: int, value: int, left: bool) -> torch.Tensor:
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if len(sequence):
            values = torch.as_tensor(sequence, dtype=torch.long)
            if left:
                out[row, length - len(sequence) :] = values
            else:
                out[row, : len(sequence)] = values
    return out


def _mask(lengths: Sequence[int], length: int, left: bool) -> torch.Tensor:
    positions = torch.arange(length).unsqueeze(0)
    lengths_t = torch.as_tensor(list(lengths), dtype=torch.long).unsqueeze(1)
    return (positions >= length - lengths_t if left else positions < lengths_t).long()


@dataclass
class TrainCollator:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` (B, T) and ``task_ids`` (B,), all long, and
    ``example_ids`` (a list of B strings) when the items carry ``example_id``.

    Items are mappings with ``input_ids``, ``labels`` (already -100 on the prompt when the loss is on the
    response only), ``task_id`` and optionally ``example_id``; padded positions get ``pad_token_id`` and
    label -100.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        lengths = [len(item["input_ids"]) for item in items]
        length = padded_length(lengths, self.pad_to_multiple_of)
        batch: dict[str, Any] = {
            "input_ids": _pad([item["input_ids"] for item in items], length, self.pad_token_id, left=False),
            "attention_mask": _mask(lengths, length, left=False),
            "labels": _pad([item["labels"] for item in items], length, IGNORE_INDEX, left=False),
            "task_ids": torch.tensor([item["task_id"] for item in items], dtype=torch.long),
        }
        if items and "example_id" in items[0]:
            batch["example_ids"] = [item["example_id"] for item in items]
        return batch


@dataclass
class GenerationCollator:
    """Left-padded prompts for ``generate``: ``input_ids``/``attention_mask`` (B, T), ``task_ids`` (B,),
    plus python lists ``prompts`` (text), ``references`` (full reference outputs, or None), ``tasks``
    (task names, or None for predict records without one) and ``example_ids`` (None for predict records).

    Items are mappings with ``prompt_ids``, ``prompt``, ``reference``, ``task``, ``task_id`` and optionally
    ``example_id``.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        lengths = [len(item["prompt_ids"]) for item in items]
        length = padded_length(lengths, self.pad_to_multiple_of)
        return {
            "input_ids": _pad([item["prompt_ids"] for item in items], length, self.pad_token_id, left=True),
            "attention_mask": _mask(lengths, length, left=True),
            "task_ids": torch.tensor([item["task_id"] for item in items], dtype=torch.long),
            "prompts": [item["prompt"] for item in items],
            "references": [item.get("reference") for item in items],
            "tasks": [item.get("task") for item in items],
            "example_ids": [item.get("example_id") for item in items],
        }
