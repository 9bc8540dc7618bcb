"""Build the frozen causal LM: from a hub name, a local path, a GGUF file or a packaged model (converted once,
see :mod:`hycam_pl.gguf`), or from a config dict for offline and tiny runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from hycam_pl.data.hub import hub_offline, offline_lookups
from hycam_pl.gguf import converted_folder, is_gguf_source

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_from_dict(values: dict[str, Any], option: str = "model.backbone") -> transformers.PretrainedConfig:
    """A transformers config from ``{model_type: ..., <fields>}``; errors name ``option``."""
    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ValueError(f"{option}: a config dict needs 'model_type' (e.g. llama, qwen2, mistral)")
    try:
        return transformers.AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{option}: invalid config for model_type {model_type!r}: {error}") from None


def backbone_config(source: Any, option: str = "model.backbone") -> transformers.PretrainedConfig | None:
    """The backbone's config without its weights (for checks before loading); None when that needs the
    network (a hub name not in the cache): the model loader reports that itself. A GGUF source is converted
    here if it was not yet (the weights are needed right after anyway)."""
    if isinstance(source, dict):
        return config_from_dict(source, option)
    if not isinstance(source, str) or not source:
        return None
    if is_gguf_source(source):
        return transformers.AutoConfig.from_pretrained(converted_folder(source, option))
    try:
        return transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def load_backbone(
    source: str | dict[str, Any],
    dtype: str = "float32",
    attn_implementation: str | None = None,
    init_seed: int = 0,
    option: str = "model.backbone",
) -> transformers.PreTrainedModel:
    """A causal LM. A dict is a transformers config (``model_type`` plus fields), randomly initialised with
    ``init_seed`` so that the same config always yields the same weights (resuming relies on it). A ``.gguf``
    path or a packaged model name (e.g. ``smollm2-135m-instruct``) loads its converted fp32 folder."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is invalid; allowed: {', '.join(DTYPES)}")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if isinstance(source, dict):
        config = config_from_dict(source, option)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = transformers.AutoModelForCausalLM.from_config(
                config, **{k: v for k, v in kwargs.items() if k != "dtype"}
            )
        if dtype not in ("auto", "float32"):
            model = model.to(DTYPES[dtype])
        return model
    if not isinstance(source, str) or not source:
        raise ValueError(f"{option} must be a hub name, a local path or a config dict; got {source!r}")
    if is_gguf_source(source):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            converted_folder(source, option), local_files_only=True, **kwargs
        )
        model.config.name_or_path = source  # adapters record the source, not the cache folder
        return model
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{option}: {path} has no config.json; is it a saved transformers model?")
        return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
    if not hub_offline():
        return transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    try:
        with offline_lookups():
            return transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        raise FileNotFoundError(
            f"{option}: model {source!r} is neither a local directory nor in the Hugging Face cache, and "
            f"the hub is offline or unreachable. Download it once with network access, or point {option} "
            "at a local directory."
        ) from None
