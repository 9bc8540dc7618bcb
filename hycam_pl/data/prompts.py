"""Turn a record into the prompt text the model sees; the response (output + EOS) follows it.

``alpaca`` is the Stanford Alpaca template the reference used (METHOD.md §5), in its with-input and
no-input variants; ``chat`` uses the tokenizer's own chat template; ``template`` is a user string with
``{instruction}`` and ``{input}`` placeholders.
"""

from __future__ import annotations

import logging
import re

from transformers import PreTrainedTokenizerBase

from hycam_pl.data.errors import DataError
from hycam_pl.data.records import Record

log = logging.getLogger(__name__)

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
_TRAILING_SPACE = re.compile(r"[ \t]+$")


def split_trailing_space(prompt: str) -> tuple[str, str]:
    """``(prompt without its trailing spaces/tabs, those spaces)``.

    Why: BPE tokenizers attach a space to the word after it (``" 42"`` is one token). A prompt ending in
    ``"A: "`` tokenised on its own ends in a lone-space token that pre-training never put before a word, so
    the space is moved to the start of the response: training sees ``"A:"`` + ``" 42"`` and generation starts
    from ``"A:"``, as the joint text would be tokenised. Trailing newlines stay (no tokenizer glues a newline
    to the next word), so the Alpaca prompt, which ends in ``"\n"``, is unchanged.
    """
    match = _TRAILING_SPACE.search(prompt)
    if match is None:
        return prompt, ""
    return prompt[: match.start()], match.group()


def check_template_whitespace(template: str | None, task_name: str) -> bool:
    """Warn when a ``template`` ends in spaces (moved to the response, see :func:`split_trailing_space`);
    returns whether it does."""
    if template is None or not _TRAILING_SPACE.search(template):
        return False
    log.warning(
        "task '%s': template %r ends in whitespace; the trailing space is moved to the start of the response "
        "(with BPE tokenizers a lone trailing space is a token pre-training never saw before a word), so the "
        "model generates it. End the template without it (e.g. 'A:' instead of 'A: ') to silence this.",
        task_name,
        template,
    )
    return True


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
