"""Fail fast and readably: configuration checks before any model is built, data checks before any run
directory exists, and a one-line ``error: ...`` at the command line instead of a traceback.

Why a separate module: the checks already live where the objects are built (the method's constructor and its
``check_backbone``/``check_adapter``, the data loaders); here they are *run earlier* and their messages are
*surfaced* without the LightningCLI/jsonargparse wrapping. The backbone is described by its config alone, so a
7B model is not loaded only to be rejected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

import hycam_pl
from hycam_pl.backbone import backbone_config
from hycam_pl.methods import DEFAULT_METHOD, resolve_method
from hycam_pl.methods.base import plain

EXIT_BAD_INPUT = 2  # bad configuration or data: fix the input, retrying will not help
EXIT_DIVERGED = 3  # training stopped after too many non-finite steps: resume from a checkpoint with changes
TRACEBACK_ENV = "HYCAM_TRACEBACK"  # set to 1 to get the full traceback instead of the one-line error
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)

_PACKAGE_DIR = Path(hycam_pl.__file__).resolve().parent


# --------------------------------------------------------------------------------------- CLI error reporting
def find_user_error(error: BaseException) -> BaseException | None:
    """The innermost error in ``error``'s cause chain that hycam_pl raised on purpose, or None.

    jsonargparse wraps a dataclass's ``ValueError`` in its own "Does not validate against any of the Union
    subtypes" error (keeping ours as ``__cause__``); Lightning re-raises ours unchanged. Anything not raised
    by hycam_pl code (a bug, a torch error) is not a user error and keeps its traceback.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    for candidate in reversed(chain):
        if isinstance(candidate, USER_ERRORS) and _raised_in_package(candidate):
            return candidate
    return None


def _raised_in_package(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def one_line(message: str) -> str:
    """Collapse a multi-line message so every user error is exactly one ``error:`` line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


@contextmanager
def report_user_errors() -> Iterator[None]:
    """Turn a hycam_pl configuration/data/numerical error into ``error: <message>`` on stderr and an exit code.

    Exit 2 for bad configuration or data, 3 for a run stopped by ``model.max_nonfinite_steps``. Any other
    exception (a bug) propagates with its traceback; ``HYCAM_TRACEBACK=1`` keeps tracebacks for all.
    """
    try:
        yield
    except Exception as error:
        found = find_user_error(error)
        if found is None or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            raise
        sys.stdout.flush()
        print(f"error: {one_line(str(found))}", file=sys.stderr, flush=True)
        code = EXIT_DIVERGED if isinstance(found, FloatingPointError) else EXIT_BAD_INPUT
        raise SystemExit(code) from None


# ------------------------------------------------------------------------- configuration, before any model
def validate_model_options(options: Mapping[str, Any]) -> None:
    """Every ``model.*`` check that needs no weights: the method's options (checked by its constructor), their
    fit to the backbone's config, and a ``model.adapter`` directory's fit to both (the method's own checks).
    Raises ``ValueError``/``FileNotFoundError`` naming the option."""
    options = plain(options)
    method = resolve_method(options.get("method", DEFAULT_METHOD))
    backbone = _backbone_config(options.get("backbone"))
    if backbone is not None:
        method.check_backbone(backbone)
    adapter = options.get("adapter")
    if adapter is not None:
        method.check_adapter(str(adapter), backbone)


def _backbone_config(source: Any) -> dict[str, Any] | None:
    """hidden size, layer count, vocabulary and type from the backbone's *config* only (never its weights);
    None when that needs the network (a hub name not in the cache): the model loader reports that itself."""
    source = plain(source)
    config = backbone_config(dict(source) if isinstance(source, Mapping) else source)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
        "vocab_size": getattr(text, "vocab_size", None),
    }


# ------------------------------------------------------------------------ data, before any run directory
def preflight(model: Any, datamodule: Any, stage: str = "fit") -> None:
    """Load, validate and tokenise the data, and check the tokenizer fits the embeddings, *before* the trainer
    creates a log directory or a checkpoint. ``MultiTaskDataModule.setup`` is idempotent, so Lightning's own
    ``setup`` call later costs nothing.
    """
    if datamodule is None or not hasattr(datamodule, "setup"):
        return
    datamodule.setup(stage)
    inner = getattr(model, "model", None)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if inner is None or tokenizer is None or not hasattr(inner, "get_input_embeddings"):
        return
    check_tokenizer_fits(inner, tokenizer)


def check_tokenizer_fits(model: nn.Module, tokenizer: Any) -> None:
    """Token ids beyond the embedding table would fail deep inside torch; say which options disagree."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"data.tokenizer has {len(tokenizer)} tokens but the model.backbone embedding has only {rows} "
            "rows; use a matching tokenizer or a larger vocab_size"
        )
