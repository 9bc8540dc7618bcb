"""Collation: dynamic padding to the batch's longest sequence, exact label masks, left padding for generation."""

from __future__ import annotations

import pytest
import torch

from hycam_pl.data import IGNORE_INDEX, GenerationCollator, TokenizeSettings, TrainCollator, tokenize_split


def items(tokenizer, loss_on="response"):
    records = [
        {"instruction": "Hi.", "input": "", "output": "Hello there, friend."},
        {"instruction": "Add 2 and 3, then explain.", "input": "ctx", "output": "5"},
        {"instruction": "Why?", "input": "", "output": "Because."},
    ]
    split = tokenize_split(records, tokenizer, TokenizeSettings(max_length=512, loss_on=loss_on))
    return [{**split.dataset[i], "task_id": i % 2} for i in range(len(records))]


@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_train_batch_shapes_padding_and_label_mask(data_byte_tokenizer, loss_on):
    batch_items = items(data_byte_tokenizer, loss_on)
    batch = TrainCollator(pad_token_id=data_byte_tokenizer.pad_token_id)(batch_items)
    lengths = [len(item["input_ids"]) for item in batch_items]
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["task_ids"].tolist() == [0, 1, 0]
    for row, item in enumerate(batch_items):
        length, prompt_length = len(item["input_ids"]), item["prompt_length"]
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert batch["input_ids"][row, :length].tolist() == item["input_ids"]
        assert (batch["input_ids"][row, length:] == data_byte_tokenizer.pad_token_id).all()
        ignored = (batch["labels"][row] == IGNORE_INDEX).nonzero().flatten().tolist()
        expected_prompt = list(range(prompt_length)) if loss_on == "response" else []
        assert ignored == expected_prompt + list(range(length, max(lengths)))
        assert batch["labels"][row, prompt_length:length].tolist() == item["input_ids"][prompt_length:]


def test_pad_to_multiple_of_rounds_up(data_byte_tokenizer):
    batch_items = items(data_byte_tokenizer)
    longest = max(len(item["input_ids"]) for item in batch_items)
    batch = TrainCollator(data_byte_tokenizer.pad_token_id, pad_to_multiple_of=64)(batch_items)
    assert batch["input_ids"].shape[1] == -(-longest // 64) * 64 > longest
    assert batch["attention_mask"].sum().item() == sum(len(item["input_ids"]) for item in batch_items)


def test_padding_does_not_depend_on_pad_id_differing_from_eos():
    eos = 1
    batch = TrainCollator(pad_token_id=eos)(
        [
            {"input_ids": [5, 6, eos], "labels": [IGNORE_INDEX, 6, eos], "task_id": 0},
            {"input_ids": [5], "labels": [5], "task_id": 1},
        ]
    )
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, eos], [5, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_generation_batch_is_left_padded_with_texts():
    generation_items = [
        {"prompt_ids": [10, 11, 12], "prompt": "abc", "reference": "x", "task": "qa", "task_id": 2},
        {"prompt_ids": [20], "prompt": "d", "reference": None, "task": None, "task_id": -1},
    ]
    batch = GenerationCollator(pad_token_id=0, pad_to_multiple_of=4)(generation_items)
    assert batch["input_ids"].tolist() == [[0, 10, 11, 12], [0, 0, 0, 20]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["task_ids"].tolist() == [2, -1]
    assert (
        batch["prompts"] == ["abc", "d"]
        and batch["references"] == ["x", None]
        and batch["tasks"] == ["qa", None]
    )
