"""Trainable-parameter counts of every method on a backbone *shape*, computed on meta-device models (no memory, no
weights): ``python -m hycam_pl.methods.counting`` prints the README's method table."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
import transformers

from hycam_pl.backbone import config_from_dict
from hycam_pl.methods.base import resolve_method
from hycam_pl.modulation.model import count_parameters_by

SMOLLM2_135M: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}
QWEN25_7B: dict[str, Any] = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}
LLAMA2_7B: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
}
SHAPES = {"SmolLM2-135M": SMOLLM2_135M, "Qwen2.5-7B": QWEN25_7B, "Llama-2-7B": LLAMA2_7B}
# (row label, model.method): every method with its defaults; the matched LoRA matches HyCAM's defaults.
TABLE_METHODS: list[tuple[str, Any]] = [
    ("full", "full"),
    ("lora", "lora"),
    (
        "lora (parameter-matched)",
        {"class_path": "hycam_pl.methods.LoRAMethod", "init_args": {"match_hycam": {}}},
    ),
    ("dora", "dora"),
    ("ia3", "ia3"),
    ("molora", "molora"),
    ("hydralora", "hydralora"),
    ("cam", "cam"),
    ("hycam", "hycam"),
]


def meta_model(shape: dict[str, Any]) -> transformers.PreTrainedModel:
    config = config_from_dict(dict(shape))
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def trainable_parameters(shape: dict[str, Any], method: Any) -> tuple[int, int]:
    """(trainable, total) parameters of ``method`` (a ``model.method`` value) on a meta-device model of ``shape``."""
    built = resolve_method(method)
    with contextlib.redirect_stdout(io.StringIO()):  # the parameter-matched LoRA prints its match
        model = built.apply(meta_model(shape))
    total = count_parameters_by(model, lambda name: "total")["total"]  # tied embeddings once
    return total["trainable"], total["trainable"] + total["frozen"]


def table() -> str:
    """The README's Markdown table of trainable parameters per method and backbone shape."""
    names = list(SHAPES)
    lines = [
        "| method | " + " | ".join(f"{n} trainable (% of base)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    bases = {n: trainable_parameters(shape, "full")[0] for n, shape in SHAPES.items()}
    for label, method in TABLE_METHODS:
        cells = []
        for name, shape in SHAPES.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                count, _ = trainable_parameters(shape, method)
            cells.append(f"{count:,} ({100 * count / bases[name]:.2f}%)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
