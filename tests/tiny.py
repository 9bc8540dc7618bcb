"""The tiny backbone that training-level tests build from a config: Llama-shaped, sized for the byte tokenizer."""

from __future__ import annotations

from typing import Any


def tiny_byte_llama(**overrides: Any) -> dict[str, Any]:
    """A ``model.backbone`` config dict (vocab 384 = ``len(load_tokenizer("byte"))``); nothing is downloaded."""
    config: dict[str, Any] = {
        "model_type": "llama",
        "vocab_size": 384,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    config.update(overrides)
    return config
