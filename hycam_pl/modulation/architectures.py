"""Which decoder families HyCAM can attach to, and where it finds the pieces of each layer.

Adding an architecture is one :func:`register_architecture` call (or one entry below) when its decoder layer is
pre-norm and calls ``self_attn(hidden_states=...)``: name the attention submodule, the norm whose *input* is the
residual stream, and, if the attention output is normed before the residual add (Gemma 2/3), that norm.
Then add the family to the identity test in ``tests/modulation/test_identity.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchitectureSpec:
    attention: str = "self_attn"
    input_norm: str = "input_layernorm"
    # Set when the attention output passes through a norm before the residual add. In ``attention_output`` mode
    # we still modulate the raw attention output (before this norm); in ``residual_sum`` mode we modulate this
    # norm's output plus the residual, which is the reference formula for such layers.
    post_attention_norm: str | None = None
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")


LLAMA_STYLE = ArchitectureSpec()
GEMMA2_STYLE = ArchitectureSpec(
    post_attention_norm="post_attention_layernorm",
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": LLAMA_STYLE,
    "mistral": LLAMA_STYLE,
    "qwen2": LLAMA_STYLE,
    "qwen3": LLAMA_STYLE,
    "gemma": LLAMA_STYLE,
    "gemma2": GEMMA2_STYLE,
    "gemma3_text": GEMMA2_STYLE,
}


class UnsupportedArchitectureError(ValueError):
    pass


def register_architecture(model_type: str, spec: ArchitectureSpec) -> None:
    ARCHITECTURES[model_type] = spec


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no Hugging Face config; HyCAM attaches to transformers models "
            f"of type {supported_list()}."
        )
    return getattr(config, "model_type", None) or "unknown"


def resolve_architecture(model: nn.Module) -> ArchitectureSpec:
    model_type = model_type_of(model)
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"HyCAM does not support model_type {model_type!r} ({type(model).__name__}); supported: "
            f"{supported_list()}. See hycam_pl/modulation/architectures.py to register another decoder."
        )
    return spec


def supported_list() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def find_decoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The module that owns the decoder layers (e.g. ``LlamaModel``) and its ``layers`` list."""
    candidates = [model]
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            candidates.insert(0, get_decoder())
        except (AttributeError, NotImplementedError):
            pass
    candidates.append(getattr(model, "model", None))
    for candidate in candidates:
        layers = getattr(candidate, "layers", None) if candidate is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return candidate, layers
    raise UnsupportedArchitectureError(
        f"could not find the decoder layers of {type(model).__name__} (looked for a `layers` ModuleList on the "
        "model and its decoder)."
    )


def check_layer(layer: nn.Module, spec: ArchitectureSpec, index: int, model_type: str) -> None:
    names = [spec.attention, spec.input_norm] + (
        [spec.post_attention_norm] if spec.post_attention_norm else []
    )
    missing = [name for name in names if not isinstance(getattr(layer, name, None), nn.Module)]
    if missing:
        raise UnsupportedArchitectureError(
            f"decoder layer {index} ({type(layer).__name__}) of model_type {model_type!r} has no submodule(s) "
            f"{missing}; its registry entry in hycam_pl/modulation/architectures.py does not match this model."
        )
