"""Load the tokenizer a run uses, offline-friendly, always with a pad token.

``"byte"`` is a file-free byte-level tokenizer (``ByT5Tokenizer``: 256 byte ids plus specials, 384 in
total), so tests and smoke runs need nothing from the Hub. Size embeddings with ``len(tokenizer)``. A ``.gguf``
path or a packaged model name (``smollm2-135m-instruct``) loads the tokenizer of its converted folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase

from hycam_pl.data.hub import hub_offline
from hycam_pl.gguf import converted_folder, is_gguf_source

log = logging.getLogger(__name__)

BYTE_TOKENIZER = "byte"


def load_tokenizer(name_or_path: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Return the tokenizer ``name_or_path``: ``"byte"``, a GGUF file or packaged model, a local directory, or a
    Hub name.

    A Hub name is looked up in the local cache first; if it is not cached and the Hub is offline
    (``HF_HUB_OFFLINE`` set or the endpoint unreachable) this raises ``FileNotFoundError`` within seconds
    instead of retrying. A tokenizer without a pad token gets ``pad = eos`` (safe here because labels and
    attention masks come from lengths, never from comparing ids with the pad id).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if name_or_path == BYTE_TOKENIZER:
        tokenizer: PreTrainedTokenizerBase = ByT5Tokenizer()
    elif is_gguf_source(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(str(converted_folder(name_or_path, "data.tokenizer")))
    elif Path(name_or_path).expanduser().exists():
        tokenizer = AutoTokenizer.from_pretrained(str(Path(name_or_path).expanduser()))
    elif _looks_like_path(name_or_path):
        raise FileNotFoundError(f"tokenizer '{name_or_path}': no such file or directory")
    else:
        tokenizer = _from_hub(name_or_path)
    tokenizer.padding_side = padding_side
    _ensure_pad_token(tokenizer, name_or_path)
    return tokenizer


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _from_hub(name: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError as cached_error:
        if hub_offline():
            raise FileNotFoundError(
                f"tokenizer '{name}' is not a local directory and is not in the Hugging Face cache, and the "
                "Hub is offline (HF_HUB_OFFLINE is set or the Hub is unreachable); download it on a machine "
                "with network access or pass a local path"
            ) from cached_error
    return AutoTokenizer.from_pretrained(name)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer '{name}' has no eos token; responses must end with one")
    if tokenizer.pad_token_id is None:
        log.info(
            "tokenizer '%s' has no pad token; using its eos token %r for padding", name, tokenizer.eos_token
        )
        tokenizer.pad_token = tokenizer.eos_token
