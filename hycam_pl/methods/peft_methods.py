"""LoRA, DoRA and (IA)^3 through ``peft`` itself, and the parameter-matched LoRA baseline.

Each method's constructor takes the main ``peft.LoraConfig`` / ``peft.IA3Config`` fields, with project defaults
that name the same modules in all seven supported families (Llama, Mistral, Qwen2/3, Gemma 1/2/3 call them
alike); ``options`` passes any other field of that peft class through unchanged. Adapters are saved as ordinary peft adapter folders
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
from hycam_pl.methods.base import (
    AdaptationMethod,
    is_bias_or_norm,
    register_method,
    trainable_count,
)
from hycam_pl.methods.lora_mixture import ATTENTION_PROJECTIONS
from hycam_pl.modulation import HyCAMConfig
from hycam_pl.modulation.model import count_parameters_by, validate_for_model
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
    """A method built by ``peft.get_peft_model`` from a ``peft`` config class (:attr:`config_class`) and the
    options its subclass collects; ``options`` passes further fields of that class through unchanged."""

    exports_adapter = True
    adapter_index_file = "adapter_config.json"  # peft's own; hycam_method.json beside it
    config_class_name = "LoraConfig"

    def setup(self, options: dict[str, Any], extra: dict[str, Any] | None) -> None:
        import peft

        self.config_class = getattr(peft, self.config_class_name)
        extra = dict(extra or {})
        known = _config_fields(self.config_class)
        clash = sorted(set(extra) & set(options))
        if clash:
            raise ValueError(f"model.method.options {clash} are options of their own; set them there")
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(
                f"model.method.options: unknown option(s) {unknown} for {type(self).__name__}; known: "
                f"{', '.join(sorted(known))} (peft.{self.config_class.__name__})"
            )
        self.options = {**options, **extra}
        self.reference: HyCAMConfig | None = None
        self.matched: dict[str, int] | None = None
        self.peft_config()  # peft's own validation, before any model is built

    def structure(self) -> dict[str, Any]:
        """Everything but dropout fixes the adapter's tensors or their meaning."""
        return {k: v for k, v in self.init_args.items() if k != "lora_dropout"}

    def peft_config(self, **overrides: Any) -> peft.PeftConfig:
        options = {k: v for k, v in {**self.options, **overrides}.items() if v is not None}
        try:
            return self.config_class(task_type="CAUSAL_LM", **options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.method ({self.name}): {error}") from None

    def apply(self, model: nn.Module) -> nn.Module:
        overrides: dict[str, Any] = {}
        if self.reference is not None:
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
                f"{self.matched['lora']:,} trainable parameters; HyCAM (model.method.match_hycam) has "
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
                f"model.method.target_modules={self.targets()} matches no linear layer of the backbone"
            )
        best = max(1, round(hycam / per_rank))
        rank = min((r for r in (best - 1, best, best + 1) if r >= 1), key=lambda r: abs(r * per_rank - hycam))
        self.matched = {"rank": rank, "hycam": hycam}
        overrides: dict[str, Any] = {"r": rank}
        if self.options["lora_alpha"] is None:
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
        """The fresh base ``model`` wrapped with the saved adapter, trainable as after :meth:`apply` (call
        ``requires_grad_(False)`` for inference); refuses another method or base."""
        meta = read_method_file(directory)
        if meta.get("method") != self.name:
            raise AdapterError(
                f"adapter {directory} was saved by method {meta.get('method')!r}, not {self.name!r}"
            )
        check_base_matches(model, meta, directory)
        import peft

        loaded = peft.PeftModel.from_pretrained(model, str(directory), is_trainable=True)
        loaded.enable_input_require_grads()
        return loaded

    @classmethod
    def adapter_kind(cls, directory: Path) -> str | None:
        if not (Path(directory) / METHOD_FILE).is_file():
            return None
        try:
            return f"peft {read_method_file(directory).get('method')}"
        except (FileNotFoundError, ValueError):
            return "peft"

    def check_adapter(self, directory: str, backbone: Any) -> None:
        try:
            meta = read_method_file(directory)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"model.adapter: {error}") from None
        if meta.get("method") != self.name:
            raise ValueError(
                f"model.adapter={directory!r} was saved by method {meta.get('method')!r}, not {self.name!r}"
            )

    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return count_parameters_by(
            model, lambda name: "adapter" if ("lora_" in name or "ia3_" in name) else "backbone"
        )


def read_method_file(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / METHOD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {directory} an adapter saved by hycam_pl?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"{path} is corrupt: {error}") from None


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
    shapes = hycam_expected_shapes(model, config, validate_for_model(model, config))
    return sum(int(torch.Size(shape).numel()) for shape in shapes.values())


class LoRAMethod(PeftMethod):
    """LoRA (``peft.LoraConfig``). ``match_hycam`` (HyCAM options, e.g. ``{num_experts: 4, rank: 8}``) chooses
    the rank when the backbone is known: the one whose trainable-parameter count on ``target_modules`` is
    closest to that HyCAM's on the same backbone; ``lora_alpha`` then defaults to ``2 * r`` (scale 2)."""

    name = "lora"
    use_dora = False

    def __init__(
        self,
        r: int | None = None,
        lora_alpha: int | None = None,
        lora_dropout: float = 0.05,
        target_modules: list[str] | str = LORA_DEFAULTS["target_modules"],
        match_hycam: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        if match_hycam is not None and r is not None:
            raise ValueError("model.method: match_hycam chooses the rank; remove r (or match_hycam)")
        rank = LORA_DEFAULTS["r"] if r is None else r
        alpha = (
            lora_alpha if lora_alpha is not None or match_hycam is not None else LORA_DEFAULTS["lora_alpha"]
        )
        chosen = {
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": lora_dropout,
            "target_modules": target_modules,
        }
        if self.use_dora:
            chosen["use_dora"] = True
        self.setup(chosen, options)
        if match_hycam is not None:
            try:
                self.reference = HyCAMConfig.from_dict(dict(match_hycam))
            except (TypeError, ValueError) as error:
                raise ValueError(f"model.method.match_hycam: {error}") from None


class DoRAMethod(LoRAMethod):
    """DoRA: LoRA with a trained magnitude per output (``use_dora``); the same options as :class:`LoRAMethod`."""

    name = "dora"
    use_dora = True


class IA3Method(PeftMethod):
    """(IA)^3 (``peft.IA3Config``): learned rescaling of ``target_modules``' activations; by default the
    paper's choice, keys, values and the feed-forward intermediate activation."""

    name = "ia3"
    config_class_name = "IA3Config"

    def __init__(
        self,
        target_modules: list[str] | str = IA3_DEFAULTS["target_modules"],
        feedforward_modules: list[str] | str = IA3_DEFAULTS["feedforward_modules"],
        options: dict[str, Any] | None = None,
    ) -> None:
        self.setup({"target_modules": target_modules, "feedforward_modules": feedforward_modules}, options)


register_method("lora", LoRAMethod)
register_method("dora", DoRAMethod)
register_method("ia3", IA3Method)
