"""Tokenizer loading: the file-free byte tokenizer, local directories, pad fallback, and fast offline errors."""

from __future__ import annotations

import time

import pytest
from transformers import ByT5Tokenizer, PreTrainedTokenizerFast

from hycam_pl.data import hub as hub_module
from hycam_pl.data import load_tokenizer


def test_byte_tokenizer_needs_no_files_and_has_pad_and_eos():
    tokenizer = load_tokenizer("byte")
    assert isinstance(tokenizer, ByT5Tokenizer)
    assert len(tokenizer) == 384
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    assert load_tokenizer("byte", padding_side="left").padding_side == "left"


def test_local_directory_loads(tmp_path):
    ByT5Tokenizer().save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer("hi", add_special_tokens=False)["input_ids"] == [107, 108]


def test_missing_pad_token_falls_back_to_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"<eos>": 0, "<unk>": 1, "hello": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(
        tmp_path
    )
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == tokenizer.eos_token_id == 0


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_tokenizer(str(tmp_path / "nope"))


def test_uncached_hub_name_fails_fast_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer("made-up-org/no-such-tokenizer-hycam")
    assert time.monotonic() - start < 20
    assert "made-up-org/no-such-tokenizer-hycam" in str(error.value) and "offline" in str(error.value)


def test_uncached_hub_name_fails_fast_when_hub_unreachable(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: False)
    assert hub_module.hub_offline()
    with pytest.raises(FileNotFoundError, match="Hub is offline"):
        load_tokenizer("made-up-org/no-such-tokenizer-hycam")


def test_offline_flag_detection(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    assert not hub_module.offline_flag_set()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub_module.offline_flag_set()


def test_bad_padding_side():
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer("byte", padding_side="middle")
