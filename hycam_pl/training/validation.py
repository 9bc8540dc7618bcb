"""Fail fast and readably: configuration checks before any model is built, data checks before any run
directory exists, and a one-line ``error: ...`` at the command line instead of a traceback.

Why a separate module: the checks already live where the objects are built (``HyCAMConfig``, ``build_method``,
``attach``, the data loaders); here they are *run earlier* and their messages are *surfaced* without the
LightningCLI/jsonargparse wrapping. Nothing here re-implements a rule that the library enforces elsewhere
except the two that need the backbone's weights today (rank vs hidden size, layer range), which are checked
from the backbone's config alone so a 7B model is not loaded only to be rejected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

import hycam_pl
from hycam_pl.backbone import backbone_config
from hycam_pl.methods import build_method
from hycam_pl.modulation import HyCAMConfig, find_state, is_attached, load_adapter, read_adapter_config
from hycam_pl.modulation.model import resolve_layer_indices
from hycam_pl.modulation.persistence import identity_mismatches

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
def validate_cli_config(config: Any, subcommand: str | None) -> None:
    """Check the parsed ``hycam`` config (a jsonargparse Namespace) before LightningCLI instantiates anything."""
    section = config[subcommand] if subcommand else config
    from hycam_pl.training.sharding import check_strategy  # imports Lightning's strategies: only here

    check_strategy(_plain(section.get("trainer") if hasattr(section, "get") else None))
    model = _plain(section.get("model") if hasattr(section, "get") else None)
    if isinstance(model, Mapping):
        validate_model_options(model.get("init_args", model))


def validate_model_options(options: Mapping[str, Any]) -> None:
    """Every ``model.*`` check that needs no weights: method, HyCAM options, their fit to the backbone's config,
    and a ``model.adapter`` directory's fit to both. Raises ``ValueError``/``FileNotFoundError`` naming the option.
    """
    options = _plain(options)
    method_name = options.get("method", "hycam")
    hycam_values = options.get("hycam")
    hycam = None
    if hycam_values is not None:
        hycam = _hycam_config(hycam_values)
    # unknown method, cam with experts: the module's own checks and messages
    method = build_method(method_name, hycam=hycam, method_options=_plain(options.get("method_options")))
    config = getattr(method, "config", None)
    config = config if isinstance(config, HyCAMConfig) else None  # other methods check their own options
    backbone = _backbone_config(options.get("backbone"))
    if config is not None and backbone is not None:
        hidden, num_layers = backbone["hidden_size"], backbone["num_hidden_layers"]
        if hidden is not None and config.num_experts and config.rank > hidden:
            raise ValueError(
                f"model.hycam.rank={config.rank} exceeds the hidden_size={hidden} of model.backbone; "
                f"use a rank <= {hidden}"
            )
        if num_layers is not None:
            try:
                resolve_layer_indices(config, num_layers)
            except ValueError as error:
                raise ValueError(f"model.hycam.layers: {error}") from None
    adapter = options.get("adapter")
    if adapter is not None:
        check_adapter_option(adapter, config, backbone)


def check_adapter_option(
    directory: str | os.PathLike, config: HyCAMConfig | None, backbone: Mapping[str, Any] | None
) -> None:
    """``model.adapter`` must be a saved adapter of this base model with this HyCAM configuration."""
    if config is None:
        raise ValueError(f"model.adapter={str(directory)!r} needs model.method 'hycam' or 'cam'")
    try:
        meta = read_adapter_config(directory)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"model.adapter: {error}") from None
    if backbone is not None:
        saved = meta["base_model"]
        mismatched = identity_mismatches(saved, backbone, "model.backbone")
        if mismatched:
            raise ValueError(
                f"model.adapter={str(directory)!r} was trained on a different base model "
                f"({saved.get('name_or_path') or 'unnamed'}): " + "; ".join(mismatched)
            )
    differences = config_differences(meta["config"], config)
    if differences:
        raise ValueError(
            f"model.adapter={str(directory)!r} was saved with a different HyCAM configuration than "
            f"model.hycam ({'; '.join(differences)}); set model.hycam to the adapter's values"
        )


def config_differences(saved: HyCAMConfig, configured: HyCAMConfig) -> list[str]:
    return [
        f"{f.name}: adapter {getattr(saved, f.name)!r} vs model.hycam {getattr(configured, f.name)!r}"
        for f in fields(HyCAMConfig)
        if getattr(saved, f.name) != getattr(configured, f.name)
    ]


def load_initial_adapter(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load ``model.adapter`` into a model that ``MultiTaskLM`` has already attached HyCAM to.

    Why not call :func:`hycam_pl.load_adapter` directly: its errors speak to library users ("call detach
    first"); this names the ``model.adapter`` option and says what to change in the config.
    """
    config = find_state(model).config if is_attached(model) else None
    if not isinstance(config, HyCAMConfig):  # the other methods' adapters load with ``method.load``
        raise ValueError(f"model.adapter={str(directory)!r} needs model.method 'hycam' or 'cam'")
    check_adapter_option(directory, config, None)
    try:
        load_adapter(model, directory)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"model.adapter: {error}") from None


def _hycam_config(values: Any) -> HyCAMConfig:
    if isinstance(values, HyCAMConfig):
        return values
    values = _plain(values)
    if isinstance(values, Mapping) and "init_args" in values:
        values = values["init_args"]
    if not isinstance(values, Mapping):
        raise ValueError(f"model.hycam must be a mapping of HyCAM options, got {values!r}")
    try:
        return HyCAMConfig.from_dict(dict(values))
    except (TypeError, ValueError) as error:
        raise ValueError(f"model.hycam: {error}") from None


def _backbone_config(source: Any) -> dict[str, Any] | None:
    """hidden size, layer count, vocabulary and type from the backbone's *config* only (never its weights);
    None when that needs the network (a hub name not in the cache): the model loader reports that itself."""
    source = _plain(source)
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


def _plain(value: Any) -> Any:
    """jsonargparse Namespaces to dicts (recursively), everything else unchanged."""
    if hasattr(value, "as_dict") and callable(value.as_dict):
        return value.as_dict()
    return value


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
