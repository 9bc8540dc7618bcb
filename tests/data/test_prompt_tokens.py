"""Prompt/response boundaries with real subword tokenizers: one BOS with chat templates that render it, and
no lone-space token before the answer when a template ends in a space (training ids = what generation sees)."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from hycam_pl.data import (
    IGNORE_INDEX,
    TokenizeSettings,
    build_prompt,
    tokenize_prompts,
    tokenize_split,
    tokenize_task,
)

SPECIALS = ["<pad>", "<s>", "</s>", "[INST]", "[/INST]"]
# Mistral's template renders the BOS itself (as do Llama 3's and Gemma's)
BOS_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
PLAIN_TEMPLATE = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
QA_TEMPLATE = "Q: {instruction}\nA: "  # ends in a space: the case of the old README example
RECORDS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": answer}
    for a, b, answer in [(40, 2, "42"), (3, 4, "7"), (10, 5, "15"), (1, 1, "2")]
] + [
    {"instruction": "Capital of France?", "input": "", "output": "Paris"},
    {"instruction": "Say hello.", "input": "", "output": "hello there"},
]


@pytest.fixture(scope="module")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2/Llama-3 style) trained here in well under a second; adds BOS like Llama."""
    lines = [
        f"Q: What is {a} plus {b}?\nA: {a + b}. Paris is the capital of France. Say hello there."
        for a in range(60)
        for b in range(0, 60, 7)
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def chat_tokenizer(base: PreTrainedTokenizerFast, template: str) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template", [BOS_TEMPLATE, PLAIN_TEMPLATE], ids=["renders-bos", "no-bos"])
def test_chat_prompts_start_with_exactly_one_bos(bpe_tokenizer, template):
    tok = chat_tokenizer(bpe_tokenizer, template)
    bos = tok.bos_token_id
    split = tokenize_split(RECORDS, tok, TokenizeSettings(max_length=128), prompt_format="chat")
    rows = list(split.dataset)
    assert len(rows) == len(RECORDS)
    for row in rows:
        assert row["input_ids"][0] == bos and row["input_ids"].count(bos) == 1, tok.decode(row["input_ids"])
    # predict-time prompts: the same ids as the training prompts
    prompts = [build_prompt(r, "chat", tok) for r in RECORDS]
    generation, _ = tokenize_prompts(prompts, tok, max_length=128)
    assert generation == [row["input_ids"][: row["prompt_length"]] for row in rows]


def test_bos_is_kept_once_under_prompt_truncation(bpe_tokenizer):
    tok = chat_tokenizer(bpe_tokenizer, BOS_TEMPLATE)
    settings = TokenizeSettings(max_length=16, max_prompt_length=6)
    row = tokenize_split(RECORDS[:1], tok, settings, prompt_format="chat").dataset[0]
    assert row["prompt_length"] == 6 and row["input_ids"][0] == tok.bos_token_id
    assert row["input_ids"].count(tok.bos_token_id) == 1


def test_template_ending_in_space_is_tokenised_as_the_joint_text(bpe_tokenizer, caplog):
    tok = bpe_tokenizer
    with caplog.at_level(logging.WARNING, logger="hycam_pl.data.prompts"):
        split = tokenize_task(
            "qa",
            {"train": RECORDS},
            tok,
            TokenizeSettings(max_length=128),
            prompt_format="template",
            template=QA_TEMPLATE,
        )["train"]
    assert any("ends in whitespace" in r.getMessage() and "'qa'" in r.getMessage() for r in caplog.records)
    rows = list(split.dataset)
    space = tok.convert_tokens_to_ids("Ġ")
    for record, row in zip(RECORDS, rows):
        text = build_prompt(record, "template", template=QA_TEMPLATE)
        joint = tok(text + record["output"])["input_ids"] + [tok.eos_token_id]
        assert row["input_ids"] == joint  # as if prompt and answer were one text: no lone-space token
        core = tok(text.rstrip(" "))["input_ids"]
        assert row["input_ids"][len(core) - 1] != space
        assert row["prompt_length"] == len(core) and row["input_ids"][: len(core)] == core
        assert row["labels"] == [IGNORE_INDEX] * len(core) + row["input_ids"][len(core) :]
        assert tok.decode(row["labels"][len(core) :], skip_special_tokens=True) == " " + record["output"]
    # generation starts from exactly the training prompt ids, so the model produces " 42" itself
    generation, _ = tokenize_prompts(
        [build_prompt(r, "template", template=QA_TEMPLATE) for r in RECORDS], tok, max_length=128
    )
    assert generation == [row["input_ids"][: row["prompt_length"]] for row in rows]


def test_alpaca_prompt_and_templates_without_trailing_space_are_unchanged(bpe_tokenizer, caplog):
    tok = bpe_tokenizer
    with caplog.at_level(logging.WARNING, logger="hycam_pl.data.prompts"):
        for fmt, template in (("alpaca", None), ("template", "Q: {instruction}\nA:")):
            split = tokenize_task(
                "t",
                {"train": RECORDS},
                tok,
                TokenizeSettings(max_length=256),
                prompt_format=fmt,
                template=template,
            )["train"]
            for record, row in zip(RECORDS, split.dataset):
                prompt = tok(build_prompt(record, fmt, template=template))["input_ids"]
                response = tok(record["output"], add_special_tokens=False)["input_ids"]
                assert row["input_ids"] == prompt + response + [tok.eos_token_id]
    assert not caplog.records
