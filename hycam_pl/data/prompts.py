"""Turn a record into the prompt text the model sees; the response (output + EOS) follows it.

``alpaca`` is the Stanford Alpaca template the reference used (METHOD.md §5), in its with-input and
no-input variants; ``chat`` uses the tokenizer's own chat template; ``template`` is a user string with
``{instruction}`` and ``{input}`` placeholders.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from hycam_pl.data.errors import DataError
from hycam_pl.data.records import Record

ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

_PLACEHOLDER = re.compile(r"\{(instruction|input)\}")


def fill_template(template: str, instruction: str, input: str = "") -> str:
    """Replace ``{instruction}``/``{input}`` in one pass; other braces are left alone (no ``str.format``)."""
    values = {"instruction": instruction, "input": input}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt, ending with ``### Response:\\n``; the no-input variant when ``input`` is ``""``.

    As in Stanford Alpaca, only an empty input selects the no-input variant.
    """
    if input:
        return fill_template(ALPACA_PROMPT_WITH_INPUT, instruction, input)
    return fill_template(ALPACA_PROMPT_NO_INPUT, instruction)


def check_chat_template(tokenizer: PreTrainedTokenizerBase, task_name: str) -> None:
    """Raise a clear error if ``prompt_format: chat`` is used with a tokenizer that has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"task '{task_name}': prompt_format 'chat' needs a tokenizer with a chat template, and tokenizer "
            f"'{tokenizer.name_or_path or type(tokenizer).__name__}' has none; use prompt_format 'alpaca' or "
            "'template'"
        )


def chat_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str, input: str = "") -> str:
    """One user turn (instruction, then input after a blank line) rendered with the generation prompt."""
    content = f"{instruction}\n\n{input}" if input.strip() else instruction
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def build_prompt(
    record: Record | dict,
    prompt_format: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    template: str | None = None,
) -> str:
    """The prompt text of ``record`` (``instruction`` and optional ``input``) in ``prompt_format``."""
    instruction, input = record["instruction"], record.get("input") or ""
    if prompt_format == "alpaca":
        return alpaca_prompt(instruction, input)
    if prompt_format == "template":
        if template is None:
            raise ValueError("prompt_format 'template' needs a template string")
        return fill_template(template, instruction, input)
    if prompt_format == "chat":
        if tokenizer is None:
            raise ValueError("prompt_format 'chat' needs the tokenizer")
        return chat_prompt(tokenizer, instruction, input)
    raise ValueError(f"unknown prompt_format {prompt_format!r}; expected alpaca, chat or template")
