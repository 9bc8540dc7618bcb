"""LoRA, DoRA and (IA)^3 through ``peft`` itself, and the parameter-matched LoRA baseline.

The options in ``model.method_options`` are ``peft.LoraConfig`` / ``peft.IA3Config`` fields passed through
unchanged, over project defaults that name the same modules in all seven supported families (Llama, Mistral,
Qwen2/3, Gemma 1/2/3 call them alike). Adapters are saved as ordinary peft adapter folders
(``adapter_config.json`` + ``adapter_model.safetensors``, loadable with ``PeftModel.from_pretrained``) plus
``hycam_method.json``, which records the method and the base model's identity so that loading onto a different
base is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hycam_pl.io import place_staged_folder
from hycam_pl.methods.base import AdaptationMethod, is_bias_or_norm, register_method, warn_unused_hycam
from hycam_pl.modulation import HyCAMConfig
from hycam_pl.modulation.mixture import ATTENTION_PROJECTIONS
from hycam_pl.modulation.persistence import AdapterError, base_identity, check_base_matches
from hycam_pl.modulation.persistence import _expected_shapes as hycam_expected_shapes

if TYPE_CHECKING:  # peft (~25 MB) is imported only when a peft method is built, not by every `hycam` run
    import peft

log = logging.getLogger(__name__)

METHOD_FILE = "hycam_method.json"
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    # All four attention projections: the block HyCAM modulates, so a matched LoRA spends its parameters where
    # HyCAM acts, and r * (d_in + d_out) per projection keeps the matched rank moderate.
    "target_modules": list(ATTENTION_PROJECTIONS),
}
# The (IA)^3 paper's choice: rescale keys, values and the feed-forward intermediate activation.
IA3_DEFAULTS: dict[str, Any] = {
    "target_modules": ["k_proj", "v_proj", "down_proj"],
    "feedforward_modules": ["down_proj"],
}
MANAGED = ("task_type", "peft_type", "use_dora", "base_model_name_or_path", "inference_mode")


def _config_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - set(MANAGED)


class PeftMethod(AdaptationMethod):
    """``lora``, ``dora`` (LoRA with ``use_dora``) or ``ia3``, built by ``peft.get_peft_model``.

    ``lora`` also takes ``match_parameters: true``: the rank is then chosen when the backbone is known, as the
    one whose trainable-parameter count on ``target_modules`` is closest to HyCAM's (``model.hycam``, or the
    ``HyCAMConfig`` defaults) on the same backbone; ``lora_alpha`` defaults to ``2 * r`` then (the default
    scale alpha / r = 2).
    """

    exports_adapter = True

    def __init__(
        self, kind: str, hycam: HyCAMConfig | None = None, method_options: dict[str, Any] | None = None
    ) -> None:
        self.name = kind
        options = dict(method_options or {})
        self.match_parameters = bool(options.pop("match_parameters", False))
        if self.match_parameters and kind != "lora":
            raise ValueError(
                f"model.method_options.match_parameters is for model.method='lora', not {kind!r}"
            )
        if self.match_parameters and "r" in options:
            raise ValueError(
                "model.method_options: match_parameters chooses the rank; remove r (or match_parameters)"
            )
        if not self.match_parameters:
            warn_unused_hycam(kind, hycam)
        self.reference = hycam or HyCAMConfig()
        self.reference_label = "model.hycam" if hycam is not None else "HyCAMConfig defaults"
        import peft

        self.config_class = peft.IA3Config if kind == "ia3" else peft.LoraConfig
        unknown = sorted(set(options) - _config_fields(self.config_class))
        if unknown:
            raise ValueError(
                f"model.method_options: unknown option(s) {unknown} for model.method={kind!r}; known: "
                f"{', '.join(sorted(_config_fields(self.config_class)))} (peft.{self.config_class.__name__})"
                + (", match_parameters" if kind == "lora" else "")
            )
        defaults = IA3_DEFAULTS if kind == "ia3" else LORA_DEFAULTS
        self.options = {**defaults, **options}
        self.matched: dict[str, int] | None = None
        self.peft_config()  # peft's own validation, before any model is built

    def peft_config(self, **overrides: Any) -> peft.PeftConfig:
        options = {**self.options, **overrides}
        if self.name == "dora":
            options["use_dora"] = True
        try:
            return self.config_class(task_type="CAUSAL_LM", **options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.method_options for {self.name!r}: {error}") from None

    def apply(self, model: nn.Module) -> nn.Module:
        overrides: dict[str, Any] = {}
        if self.match_parameters:
            overrides = self.match_rank(model)
        config = self.peft_config(**overrides)
        import peft

        try:
            wrapped = peft.get_peft_model(model, config)
        except ValueError as error:  # e.g. target modules not found in the model
            raise ValueError(f"model.method={self.name!r}: {error}") from None
        # Re-entrant activation checkpointing of a frozen backbone needs an input that requires grad.
        wrapped.enable_input_require_grads()
        if self.matched is not None:
            self.matched["lora"] = trainable_count(wrapped)
            print(
                f"parameter-matched LoRA: rank {self.matched['rank']} on {', '.join(self.targets())} -> "
                f"{self.matched['lora']:,} trainable parameters; HyCAM ({self.reference_label}) has "
                f"{self.matched['hycam']:,} (ratio {self.matched['lora'] / self.matched['hycam']:.4f})"
            )
        return wrapped

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """DoRA magnitudes and (IA)^3 scales are multiplicative (initialised from the weight norms / to 1):
        weight decay would pull them towards 0, so they never decay; LoRA's A and B do (biases never)."""
        return not ("lora_magnitude_vector" in name or "ia3_l" in name or is_bias_or_norm(name))

    # ------------------------------------------------------------------------------ parameter matching
    def targets(self) -> list[str]:
        targets = self.options["target_modules"]
        return [targets] if isinstance(targets, str) else list(targets)

    def match_rank(self, model: nn.Module) -> dict[str, Any]:
        """The rank whose LoRA count on the target modules is closest to HyCAM's on this backbone."""
        hycam = hycam_trainable_count(model, self.reference)
        per_rank = lora_parameters_per_rank(model, self.targets())
        if per_rank == 0:
            raise ValueError(
                f"model.method_options.target_modules={self.targets()} matches no linear layer of the backbone"
            )
        best = max(1, round(hycam / per_rank))
        rank = min((r for r in (best - 1, best, best + 1) if r >= 1), key=lambda r: abs(r * per_rank - hycam))
        self.matched = {"rank": rank, "hycam": hycam}
        overrides: dict[str, Any] = {"r": rank}
        if "lora_alpha" not in self.options or self.options["lora_alpha"] == LORA_DEFAULTS["lora_alpha"]:
            overrides["lora_alpha"] = 2 * rank
        return overrides

    # --------------------------------------------------------------------------------- save and load
    def save(self, model: nn.Module, directory: str) -> None:
        """A peft adapter folder plus ``hycam_method.json``, staged beside ``directory`` and moved into place; in an
        existing folder only these files are replaced (:func:`hycam_pl.io.place_staged_folder`), nothing else."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            model.save_pretrained(str(staging))
            meta = {"method": self.name, "base_model": base_identity(model.get_base_model())}
            (staging / METHOD_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            place_staged_folder(staging, target, last=(METHOD_FILE,))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        """The fresh base ``model`` wrapped with the saved adapter (frozen); refuses another method or base."""
        meta = read_method_file(directory)
        if meta.get("method") != self.name:
            raise AdapterError(
                f"adapter {directory} was saved by method {meta.get('method')!r}, not {self.name!r}"
            )
        check_base_matches(model, meta, directory)
        import peft

        return peft.PeftModel.from_pretrained(model, str(directory))

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return summarise(model, lambda name: "adapter" if ("lora_" in name or "ia3_" in name) else "backbone")


def read_method_file(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / METHOD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {directory} an adapter saved by hycam_pl?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"{path} is corrupt: {error}") from None


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summarise(model: nn.Module, component: Any) -> dict[str, dict[str, int]]:
    """Trainable/frozen counts per ``component(parameter name)`` and in total."""
    counts: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        kind = "trainable" if param.requires_grad else "frozen"
        for key in (component(name), "total"):
            counts.setdefault(key, {"trainable": 0, "frozen": 0})[kind] += param.numel()
    counts["total"] = counts.pop("total")
    return counts


def target_linears(model: nn.Module, targets: list[str]) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules peft's list form of ``target_modules`` selects (name equal to or ending in
    ``.<target>``)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith(f".{t}") for t in targets)
    ]


def lora_parameters_per_rank(model: nn.Module, targets: list[str]) -> int:
    """LoRA adds ``r * (d_in + d_out)`` per target linear (A: r x d_in, B: d_out x r)."""
    return sum(m.in_features + m.out_features for _, m in target_linears(model, targets))


def hycam_trainable_count(model: nn.Module, config: HyCAMConfig) -> int:
    """HyCAM's trainable parameters on ``model`` (shapes from meta-device modules; nothing is attached)."""
    from hycam_pl.modulation.model import validate_for_model

    shapes = hycam_expected_shapes(model, config, validate_for_model(model, config))
    return sum(int(torch.Size(shape).numel()) for shape in shapes.values())


register_method("lora", lambda hycam=None, method_options=None: PeftMethod("lora", hycam, method_options))
register_method("dora", lambda hycam=None, method_options=None: PeftMethod("dora", hycam, method_options))
register_method("ia3", lambda hycam=None, method_options=None: PeftMethod("ia3", hycam, method_options))
