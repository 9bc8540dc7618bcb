"""Fail fast and readably: configuration checks before any model is built (``model.*`` options against the
backbone's config) and the tokenizer's fit to the embeddings.

Why a separate module: the checks already live where the objects are built (the method's constructor and its
``check_backbone``/``check_adapter``, the data loaders); here they are *run earlier* and their messages are
*surfaced* without the LightningCLI/jsonargparse wrapping. The backbone is described by its config alone, so a
7B model is not loaded only to be rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hycam_pl.backbone import backbone_config
from hycam_pl.methods import DEFAULT_METHOD, resolve_method
from hycam_pl.methods.base import plain


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
def check_tokenizer_fits(model: nn.Module, tokenizer: Any) -> None:
    """Token ids beyond the embedding table would fail deep inside torch; say which options disagree."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"data.tokenizer has {len(tokenizer)} tokens but the model.backbone embedding has only {rows} "
            "rows; use a matching tokenizer or a larger vocab_size"
        )
