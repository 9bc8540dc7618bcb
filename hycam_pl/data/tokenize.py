"""Tokenise prompt + response (+ EOS), build labels, truncate without losing whole responses, and cache.

Labels are ``-100`` on prompt tokens (``loss_on="response"``, the default) or equal to the input ids
everywhere (``loss_on="all"``, what the reference trained on); padding is masked later by the collator.

Truncation, never silent:
1. with ``max_prompt_length`` set, a longer prompt loses tokens from its *left* (a leading BOS is kept);
2. the response (with its EOS) is cut from the *right* to fit ``max_length`` after the prompt;
3. if not even one response token fits, the example is dropped. Truncated and dropped examples are
   counted per split; a task whose every example is dropped raises :class:`DataError`.

The tokenised split is cached as an Arrow file through ``datasets.Dataset.map`` under ``cache_dir``,
named by a hash of the prompts, responses, tokenizer, settings and :data:`TOKENIZATION_VERSION`, so a
second run (or another rank) loads it instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from hycam_pl.data.errors import DataError
from hycam_pl.data.prompts import build_prompt, check_template_whitespace, split_trailing_space
from hycam_pl.data.records import Record

IGNORE_INDEX = -100
TOKENIZATION_VERSION = 2  # bump when the output of _tokenize_batch changes for the same inputs
LOSS_ON = ("response", "all")

LossOn = Literal["response", "all"]

_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "reference": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "prompt_length": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
        "dropped": datasets.Value("bool"),
    }
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizeSettings:
    """How examples become token sequences; every field is part of the cache key."""

    max_length: int
    loss_on: LossOn = "response"
    max_prompt_length: int | None = None

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(
                f"max_length must be >= 2 (a prompt token and a response token), got {self.max_length}"
            )
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {self.loss_on!r}")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(
                f"max_prompt_length must be in [1, max_length={self.max_length}), got {self.max_prompt_length}"
            )


@dataclass
class TokenizedSplit:
    """One split of one task after tokenisation: the kept examples and what happened to the others.

    ``dataset`` columns: ``input_ids``, ``labels``, ``prompt_length`` (tokens of the possibly truncated
    prompt at the start of ``input_ids``), ``prompt`` (full prompt text), ``reference`` (full output text), and
    ``example_id`` when ids were given (see :mod:`hycam_pl.data.example_ids`).
    """

    dataset: datasets.Dataset
    total: int
    truncated: int
    dropped: int
    cache_file: str | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.dataset)


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts *before* text by default (e.g. Llama's BOS); ByT5 and Qwen have none.

    Found by comparing an encoding with and without special tokens, so no per-model table is needed.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def with_prefix(prefix: list[int], prompt_ids: Sequence[int]) -> list[int]:
    """``prefix + prompt_ids``, unless the prompt already starts with the prefix: a chat template that renders
    ``{{ bos_token }}`` (Llama 3, Mistral, Gemma) puts the BOS in the text, and a second one would be added."""
    prompt_ids = list(prompt_ids)
    if prefix and prompt_ids[: len(prefix)] == prefix:
        return prompt_ids
    return prefix + prompt_ids


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and response ids (no special tokens), the prompt's trailing spaces moved to the response
    (:func:`~hycam_pl.data.prompts.split_trailing_space`), so they match what generation sees."""
    cores, moved = zip(*(split_trailing_space(p) for p in prompts)) if prompts else ((), ())
    prompt_ids = tokenizer(list(cores), add_special_tokens=False)["input_ids"] if prompts else []
    texts = [space + response for space, response in zip(moved, responses)]
    response_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [list(ids) for ids in prompt_ids], [list(ids) for ids in response_ids]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash that changes whenever the tokenizer would produce different ids or special tokens."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = (
        backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    parts = (
        type(tokenizer).__name__,
        len(tokenizer),
        vocabulary,
        json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        getattr(tokenizer, "chat_template", None) or "",
        special_prefix(tokenizer),
        tokenizer.eos_token_id,
    )
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _cache_key(
    prompts: Sequence[str], responses: Sequence[str], tokenizer_key: str, settings: TokenizeSettings
) -> str:
    digest = hashlib.sha256(f"v{TOKENIZATION_VERSION}|{tokenizer_key}|{settings}".encode())
    for prompt, response in zip(prompts, responses):
        for text in (prompt, response):
            encoded = text.encode()
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
    return digest.hexdigest()[:40]


def fit_example(
    prompt_ids: list[int], response_ids: list[int], prefix_length: int, settings: TokenizeSettings
) -> tuple[list[int], list[int], bool] | None:
    """Truncate one (prompt, response+EOS) pair to ``settings``; None when no response token fits.

    Returns ``(prompt_ids, response_ids, truncated)``. ``prefix_length`` leading prompt ids (BOS) are
    never cut by left-truncation.
    """
    truncated = False
    limit = settings.max_prompt_length
    if limit is not None and len(prompt_ids) > limit:
        head = prompt_ids[:prefix_length] if prefix_length < limit else []
        prompt_ids = head + prompt_ids[len(prompt_ids) - (limit - len(head)) :]
        truncated = True
    room = settings.max_length - len(prompt_ids)
    if room < 1:
        return None
    if len(response_ids) > room:
        response_ids = response_ids[:room]
        truncated = True
    return prompt_ids, response_ids, truncated


def _tokenize_batch(
    batch: dict[str, list[Any]],
    tokenizer: PreTrainedTokenizerBase,
    settings: TokenizeSettings,
    prefix: list[int],
) -> dict[str, list[Any]]:
    """``Dataset.map`` function: prompt/reference texts in, ids/labels/flags out (dropped rows kept, flagged)."""
    prompts, responses = encode_pairs(tokenizer, batch["prompt"], batch["reference"])
    out: dict[str, list[Any]] = {
        "input_ids": [],
        "labels": [],
        "prompt_length": [],
        "truncated": [],
        "dropped": [],
    }
    for prompt_ids, response_ids in zip(prompts, responses):
        fitted = fit_example(
            with_prefix(prefix, prompt_ids), response_ids + [tokenizer.eos_token_id], len(prefix), settings
        )
        if fitted is None:
            out["input_ids"].append([])
            out["labels"].append([])
            out["prompt_length"].append(0)
            out["truncated"].append(False)
            out["dropped"].append(True)
            continue
        prompt_ids, response_ids, truncated = fitted
        prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if settings.loss_on == "response" else prompt_ids
        out["input_ids"].append(prompt_ids + response_ids)
        out["labels"].append(prompt_labels + response_ids)
        out["prompt_length"].append(len(prompt_ids))
        out["truncated"].append(truncated)
        out["dropped"].append(False)
    return out


def tokenize_split(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    settings: TokenizeSettings,
    *,
    prompt_format: str = "alpaca",
    template: str | None = None,
    cache_dir: str | Path | None = None,
    cache_name: str = "split",
    tokenizer_key: str | None = None,
    ids: Sequence[str] | None = None,
) -> TokenizedSplit:
    """Tokenise ``records`` (cached under ``cache_dir`` when given) and drop examples that cannot fit.

    ``tokenizer_key`` is :func:`tokenizer_fingerprint` of ``tokenizer``, computed once by callers that
    tokenise many splits; ``cache_name`` only makes cache file names readable. ``ids`` (one per record)
    become the ``example_id`` column; they are not part of the cache key, since they change no token.
    """
    if ids is not None and len(ids) != len(records):
        raise ValueError(f"{len(ids)} example ids for {len(records)} records")
    if not records:
        empty = datasets.Dataset.from_dict({name: [] for name in _FEATURES}, features=_FEATURES)
        empty = _with_ids(empty, ids)
        return TokenizedSplit(empty.remove_columns(["truncated", "dropped"]), total=0, truncated=0, dropped=0)
    prompts = [build_prompt(record, prompt_format, tokenizer, template) for record in records]
    responses = [record["output"] for record in records]
    table = datasets.Dataset.from_dict({"prompt": prompts, "reference": responses})
    map_kwargs: dict[str, Any] = {
        "function": _tokenize_batch,
        "batched": True,
        "fn_kwargs": {"tokenizer": tokenizer, "settings": settings, "prefix": special_prefix(tokenizer)},
        "features": _FEATURES,
        "desc": f"tokenizing {cache_name}",
    }
    # An explicit fingerprint: ``datasets`` would otherwise try to hash the tokenizer passed in fn_kwargs.
    key = _cache_key(prompts, responses, tokenizer_key or tokenizer_fingerprint(tokenizer), settings)
    map_kwargs["new_fingerprint"] = key
    cache_file, from_cache = None, False
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', cache_name)}-{key}.arrow")
        from_cache = Path(cache_file).exists()
        map_kwargs.update(cache_file_name=cache_file, load_from_cache_file=True)
    else:
        map_kwargs.update(keep_in_memory=True, load_from_cache_file=False)
    try:
        mapped = table.map(**map_kwargs)
        if from_cache and (len(mapped) != len(table) or set(mapped.column_names) != set(_FEATURES)):
            raise ValueError(
                f"{len(mapped)} rows and columns {mapped.column_names} for {len(table)} examples"
            )
    except (pa.ArrowException, OSError, ValueError) as error:
        if not from_cache:
            raise
        # Our own cache file, cut short or overwritten (a killed run, a full disk): rebuilt, as the model cache is.
        log.warning(
            "tokenisation cache %s is unreadable (%s); tokenizing %s again", cache_file, error, cache_name
        )
        Path(cache_file).unlink(missing_ok=True)
        from_cache = False
        mapped = table.map(**{**map_kwargs, "load_from_cache_file": False})
    tokenized = _with_ids(mapped, ids)
    if from_cache:
        log.debug("loaded tokenized %s from %s", cache_name, cache_file)
    flags = tokenized.with_format("numpy", columns=["truncated", "dropped"])
    dropped, truncated = np.asarray(flags["dropped"], dtype=bool), np.asarray(flags["truncated"], dtype=bool)
    kept = tokenized.select(np.flatnonzero(~dropped)) if dropped.any() else tokenized
    return TokenizedSplit(
        dataset=kept.remove_columns(["truncated", "dropped"]),
        total=len(records),
        truncated=int(truncated.sum()),
        dropped=int(dropped.sum()),
        cache_file=cache_file,
        from_cache=from_cache,
    )


def _with_ids(dataset: datasets.Dataset, ids: Sequence[str] | None) -> datasets.Dataset:
    if ids is None:
        return dataset
    return dataset.add_column("example_id", list(ids), feature=datasets.Value("string"))


def tokenize_task(
    task_name: str,
    splits: dict[str, Sequence[Record]],
    tokenizer: PreTrainedTokenizerBase,
    settings: TokenizeSettings,
    *,
    prompt_format: str = "alpaca",
    template: str | None = None,
    cache_dir: str | Path | None = None,
    tokenizer_key: str | None = None,
    ids: dict[str, Sequence[str]] | None = None,
) -> dict[str, TokenizedSplit]:
    """Tokenise every split of one task; raises :class:`DataError` when no example of it fits at all.

    ``ids``: the split's example ids, per split (see :func:`tokenize_split`)."""
    key = tokenizer_key or tokenizer_fingerprint(tokenizer)
    if prompt_format == "template":
        check_template_whitespace(template, task_name)
    result = {
        split: tokenize_split(
            records,
            tokenizer,
            settings,
            prompt_format=prompt_format,
            template=template,
            cache_dir=cache_dir,
            cache_name=f"{task_name}-{split}",
            tokenizer_key=key,
            ids=ids[split] if ids is not None else None,
        )
        for split, records in splits.items()
    }
    total = sum(part.total for part in result.values())
    if total and all(len(part) == 0 for part in result.values()):
        prompt_note = "" if settings.max_prompt_length else " or set max_prompt_length"
        raise DataError(
            f"task '{task_name}': all {total} examples are longer than max_length={settings.max_length} "
            f"(no response token fits after the prompt); raise max_length{prompt_note}"
        )
    for split, part in result.items():
        if part.truncated or part.dropped:
            log.info(
                "task '%s' %s: %d of %d examples truncated, %d dropped (max_length=%d)",
                task_name,
                split,
                part.truncated,
                part.total,
                part.dropped,
                settings.max_length,
            )
    return result


def tokenize_prompts(
    prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[list[int]], int]:
    """Prompt ids for generation, left-truncated to ``max_length`` (leading BOS kept); also the count cut.

    The same ids as the prompt part of a training example: one BOS, trailing spaces left to the model.
    """
    prefix = special_prefix(tokenizer)
    settings = TokenizeSettings(max_length=max_length + 1, max_prompt_length=max_length)
    encoded, _ = encode_pairs(tokenizer, prompts, [""] * len(prompts))
    result, truncated = [], 0
    for ids in encoded:
        fitted = fit_example(with_prefix(prefix, ids), [], len(prefix), settings)
        assert fitted is not None  # max_length + 1 always leaves room
        result.append(fitted[0])
        truncated += fitted[2]
    return result, truncated
