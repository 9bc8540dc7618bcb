"""Tokenisation: label masks, EOS, truncation that never silently drops responses, and the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

import hycam_pl.data.tokenize as tokenize_module
from hycam_pl.data import (
    IGNORE_INDEX,
    DataError,
    TokenizeSettings,
    alpaca_prompt,
    tokenize_prompts,
    tokenize_split,
    tokenize_task,
)
from hycam_pl.data.tokenize import fit_example


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def record(instruction="Add 1 and 2.", output="3"):
    return {"instruction": instruction, "input": "", "output": output}


def test_labels_mask_exactly_the_prompt_and_response_ends_with_eos(data_byte_tokenizer):
    tok = data_byte_tokenizer
    split = tokenize_split([record()], tok, TokenizeSettings(max_length=512))
    row = split.dataset[0]
    prompt_ids = encode(tok, alpaca_prompt("Add 1 and 2."))
    response_ids = encode(tok, "3") + [tok.eos_token_id]
    assert row["input_ids"] == prompt_ids + response_ids
    assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    assert row["prompt_length"] == len(prompt_ids)
    assert row["reference"] == "3" and row["prompt"] == alpaca_prompt("Add 1 and 2.")


def test_loss_on_all_labels_every_token(data_byte_tokenizer):
    split = tokenize_split([record()], data_byte_tokenizer, TokenizeSettings(max_length=512, loss_on="all"))
    row = split.dataset[0]
    assert row["labels"] == row["input_ids"] and IGNORE_INDEX not in row["labels"]


def test_response_is_cut_from_the_right_and_counted(data_byte_tokenizer):
    tok = data_byte_tokenizer
    prompt_length = len(encode(tok, alpaca_prompt("Count.")))
    records = [record("Count.", "1 2 3 4 5 6 7 8 9"), record("Count.", "1")]
    split = tokenize_split(records, tok, TokenizeSettings(max_length=prompt_length + 4))
    assert (split.total, len(split), split.truncated, split.dropped) == (2, 2, 1, 0)
    first = split.dataset[0]
    assert first["input_ids"][prompt_length:] == encode(tok, "1 2 ")  # no room left for EOS
    assert first["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length


def test_example_without_room_for_one_response_token_is_dropped_and_counted(data_byte_tokenizer):
    tok = data_byte_tokenizer
    short_length = len(encode(tok, alpaca_prompt("Hi.")))
    records = [record("Hi.", "ok"), record("A much longer instruction.", "ok")]
    split = tokenize_split(records, tok, TokenizeSettings(max_length=short_length + 1))
    assert (split.total, len(split), split.truncated, split.dropped) == (2, 1, 1, 1)
    assert split.dataset[0]["input_ids"][-1] == encode(tok, "o")[0]


def test_max_prompt_length_cuts_the_prompt_from_the_left():
    settings = TokenizeSettings(max_length=8, max_prompt_length=4)
    prompt, response = [100, 1, 2, 3, 4, 5, 6], [7, 8]  # 100 plays a BOS
    kept_prompt, kept_response, truncated = fit_example(prompt, response, 1, settings)
    assert kept_prompt == [100, 4, 5, 6] and kept_response == [7, 8] and truncated
    assert fit_example(prompt, response, 0, settings)[0] == [3, 4, 5, 6]
    assert fit_example([1, 2], [3], 0, settings) == ([1, 2], [3], False)


def test_task_whose_every_example_is_too_long_is_an_error(data_byte_tokenizer):
    splits = {"train": [record("x" * 300)], "validation": [record("y" * 300)], "test": []}
    with pytest.raises(DataError) as error:
        tokenize_task("long", splits, data_byte_tokenizer, TokenizeSettings(max_length=64))
    assert str(error.value) == (
        "task 'long': all 2 examples are longer than max_length=64 (no response token fits after the prompt); "
        "raise max_length or set max_prompt_length"
    )


def test_tokenisation_is_cached_and_reused(data_byte_tokenizer, tmp_path, monkeypatch):
    records = [record(f"Add {i} and 1.", str(i + 1)) for i in range(20)]
    settings = TokenizeSettings(max_length=256)
    first = tokenize_split(records, data_byte_tokenizer, settings, cache_dir=tmp_path, cache_name="t-train")
    assert not first.from_cache and first.cache_file is not None
    assert first.cache_file.startswith(str(tmp_path / "t-train-")) and first.cache_file.endswith(".arrow")

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenisation ran although a cached result exists")

    monkeypatch.setattr(tokenize_module, "_tokenize_batch", must_not_run)
    second = tokenize_split(records, data_byte_tokenizer, settings, cache_dir=tmp_path, cache_name="t-train")
    assert second.from_cache and second.cache_file == first.cache_file
    assert second.dataset["input_ids"][:] == first.dataset["input_ids"][:]
    assert second.dataset.cache_files[0]["filename"] == first.cache_file
    # a different max_length, loss_on or record content is a different cache entry (so it must tokenise)
    for changed_settings, changed_records in (
        (TokenizeSettings(max_length=128), records),
        (TokenizeSettings(max_length=256, loss_on="all"), records),
        (settings, [*records[:-1], record("Add 19 and 1.", "21")]),
    ):
        with pytest.raises(AssertionError, match="tokenisation ran"):
            tokenize_split(
                changed_records,
                data_byte_tokenizer,
                changed_settings,
                cache_dir=tmp_path,
                cache_name="t-train",
            )


def test_prompts_for_generation_are_left_truncated(data_byte_tokenizer):
    ids, truncated = tokenize_prompts(["abcdef", "ab"], data_byte_tokenizer, max_length=4)
    assert ids == [encode(data_byte_tokenizer, "cdef"), encode(data_byte_tokenizer, "ab")] and truncated == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 1}, "max_length must be >= 2"),
        ({"max_length": 8, "loss_on": "prompt"}, "loss_on must be one of response, all"),
        ({"max_length": 8, "max_prompt_length": 8}, "max_prompt_length must be in [1, max_length=8)"),
    ],
)
def test_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TokenizeSettings(**kwargs)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_tokenisation_cache_is_rebuilt(data_byte_tokenizer, tmp_path, caplog, damage):
    """Issue 21: a cut-short or overwritten cache file used to end the run with a pyarrow traceback."""
    records = [record(f"Add {i} and 1.", str(i + 1)) for i in range(6)]
    settings = TokenizeSettings(max_length=256)
    first = tokenize_split(records, data_byte_tokenizer, settings, cache_dir=tmp_path, cache_name="t-train")
    path = Path(first.cache_file)
    expected_ids, expected_labels = list(first.dataset["input_ids"]), list(first.dataset["labels"])
    del first  # its dataset memory-maps the file damaged below
    content = path.read_bytes()
    path.unlink()
    path.write_bytes(
        {"garbage": b"not arrow" * 50, "truncated": content[: len(content) // 2], "empty": b""}[damage]
    )
    with caplog.at_level("WARNING", logger="hycam_pl.data.tokenize"):
        again = tokenize_split(
            records, data_byte_tokenizer, settings, cache_dir=tmp_path, cache_name="t-train"
        )
    assert not again.from_cache and "is unreadable" in caplog.text
    assert list(again.dataset["input_ids"]) == expected_ids
    third = tokenize_split(records, data_byte_tokenizer, settings, cache_dir=tmp_path, cache_name="t-train")
    assert third.from_cache and list(third.dataset["labels"]) == expected_labels
