"""Prompt formats: the exact Alpaca templates, user templates, and the tokenizer's chat template."""

from __future__ import annotations

import pytest

from hycam_pl.data import DataError, alpaca_prompt, build_prompt
from hycam_pl.data.prompts import check_chat_template


def test_alpaca_without_input_is_the_stanford_template():
    assert alpaca_prompt("Add 2 and 3.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    )


def test_alpaca_with_input_is_the_stanford_template():
    assert build_prompt({"instruction": "Summarise.", "input": "Long text {x}."}, "alpaca") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nSummarise.\n\n"
        "### Input:\nLong text {x}.\n\n### Response:\n"
    )


def test_user_template_fills_placeholders_only():
    template = 'Q: {instruction} | ctx: {input} | json: {"k": 1}\nA:'
    record = {"instruction": "why {input}?", "input": "because"}
    assert (
        build_prompt(record, "template", template=template)
        == 'Q: why {input}? | ctx: because | json: {"k": 1}\nA:'
    )


def test_chat_format_uses_the_tokenizer_template(data_byte_tokenizer):
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    prompt = build_prompt({"instruction": "Hi", "input": "there"}, "chat", tokenizer)
    assert prompt == "<user>Hi\n\nthere</user><assistant>"
    check_chat_template(tokenizer, "t")  # no error


def test_chat_format_without_chat_template_is_a_clear_error(data_byte_tokenizer):
    with pytest.raises(
        DataError, match=r"task 'qa': prompt_format 'chat' needs a tokenizer with a chat template"
    ):
        check_chat_template(data_byte_tokenizer, "qa")
