"""The interface every adaptation method implements, and how ``model.method`` names one.

A method is one object that owns its options (its constructor's arguments), how it changes the backbone, its
auxiliary losses, its optimizer parameter groups, how its weights are saved and loaded, what must match when a
checkpoint is resumed or evaluated, and its parameter summary. The Lightning module, resume, export, callbacks
and sweeps only call this interface, so a method defined in a user's own module works everywhere by its
``class_path``.

``model.method`` is either a registry name (``hycam``, ``lora``, ...: the method with its defaults) or
LightningCLI's usual form ``{class_path: ..., init_args: {...}}``. Checkpoints store the second form
(:meth:`AdaptationMethod.spec`) with every argument, so a run is rebuilt exactly as it was configured.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hycam_pl.modulation.model import count_parameters_by

# A normalisation layer's name as transformers and torch spell them: ``input_layernorm``, ``norm``,
# ``LayerNorm``, ``layer_norm``, ``ln_f``/``ln_1`` (GPT-2), ``q_norm``.
_NORM_LAYER = re.compile(r"norm|^ln(_|$)", re.IGNORECASE)
OPTION = "model.method"
DEFAULT_METHOD = "hycam"  # model.method when a config names none


def is_bias_or_norm(name: str) -> bool:
    """Whether parameter ``name`` is a bias (``bias``, ``bias_A``...) or belongs to a normalisation layer."""
    parts = name.split(".")
    if "bias" in parts[-1].lower():
        return True
    return len(parts) > 1 and _NORM_LAYER.search(parts[-2]) is not None


def trainable_count(model: nn.Module) -> int:
    return count_parameters_by(model, lambda name: "total")["total"]["trainable"]


class AdaptationMethod:
    """Default behaviour: train every parameter, no auxiliary loss, ``decay``/``no_decay`` parameter groups,
    every constructor argument fixes the trained weights.

    A subclass takes its options as constructor arguments with type hints (LightningCLI builds it from
    ``init_args``); the arguments it was built with are recorded (:attr:`init_args`) and saved in checkpoints.
    """

    name = "base"
    exports_adapter = False  # whether ``save`` writes a small adapter folder (exported after ``fit``)
    # The file naming and checking the others: replaced last when an export overwrites a previous one.
    adapter_index_file: str | None = None
    # Plain-data classes (dataclasses of plain fields, constructing no code) that checkpoints may hold for this
    # method (hyper-parameters of earlier releases): the safe checkpoint reader allows them.
    checkpoint_types: tuple[type, ...] = ()
    init_args: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> AdaptationMethod:
        instance = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError as error:
            raise ValueError(f"{OPTION}: {cls.__name__}: {error}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
            elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                arguments.pop(name, None)
        instance.init_args = arguments
        return instance

    def spec(self) -> dict[str, Any]:
        """``{class_path, init_args}``: what rebuilds this method (saved in checkpoints and hparams)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _lists(self.init_args)}

    # ----------------------------------------------------------------------------------------- training
    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def auxiliary_losses(self, model: nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
        """Extra losses of the last forward: name -> (weight in the total loss, unweighted value)."""
        return {}

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Whether weight decay applies to a trainable parameter: decided by its role, never by its shape
        (stacked expert biases are 2-D). Biases and normalisation weights never decay; methods with other
        parameters that should not decay (e.g. scales) override this."""
        return not is_bias_or_norm(name)

    def parameter_groups(
        self, model: nn.Module, learning_rate: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """AdamW groups: ``decay`` and ``no_decay`` (see :meth:`decays`); a method with its own learning rates
        (HyCAM's shared/expert rates) makes more groups."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (decay if self.decays(name, param) else no_decay).append(param)
        return parameter_groups(
            [("decay", decay, learning_rate, weight_decay), ("no_decay", no_decay, learning_rate, 0.0)]
        )

    # --------------------------------------------------------------------------------- save and load
    def save(self, model: nn.Module, directory: str) -> None:
        """Write what is needed to reuse the trained method without the Lightning checkpoint."""
        model.save_pretrained(directory)

    @classmethod
    def adapter_kind(cls, directory: Path) -> str | None:
        """The kind of adapter folder ``directory`` holds if this class's ``save`` wrote it (e.g. ``"lora"``),
        else None: ``hycam export`` replaces a previous export only by one of the same kind."""
        return None

    def load(self, model: nn.Module, directory: str) -> nn.Module:
        """Apply the method to a fresh base ``model`` with the weights ``save`` wrote (trainable as after
        :meth:`apply`); return the model to use. Refuses an adapter of another method or base model."""
        raise ValueError(f"{OPTION}={self.name!r} has no adapter to load (model.adapter)")

    # ---------------------------------------------------------------------------------------- checks
    def structure(self) -> dict[str, Any]:
        """The options that define the trained tensors or their meaning: a checkpoint is resumed or evaluated
        only with the same values (the others may change and take effect). Default: every option."""
        return dict(self.init_args)

    def check_backbone(self, backbone: Mapping[str, Any]) -> None:
        """Refuse options that cannot fit a backbone, from its config alone (``hidden_size``,
        ``num_hidden_layers``, ``vocab_size``, ``model_type``), before any weights are read."""

    def check_adapter(self, directory: str, backbone: Mapping[str, Any] | None) -> None:
        """Refuse a ``model.adapter`` folder that this method could not load, before any weights are read."""
        if not self.exports_adapter:
            raise ValueError(f"model.adapter={directory!r}: {OPTION}={self.name!r} has no adapter to load")

    # --------------------------------------------------------------------------------------- reporting
    def summary(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return count_parameters_by(model, lambda name: "total")


def _lists(value: Any) -> Any:
    """Tuples as lists, recursively: saved hyper-parameters stay plain YAML/JSON."""
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def parameter_groups(specs: list[tuple[str, list, float, float]]) -> list[dict[str, Any]]:
    """AdamW groups from ``(name, params, lr, weight_decay)``, empty ones left out."""
    return [
        {"name": name, "params": params, "lr": lr, "weight_decay": wd}
        for name, params, lr, wd in specs
        if params
    ]


# ------------------------------------------------------------------------------------------ the registry
METHODS: dict[str, Callable[[], AdaptationMethod]] = {}


def register_method(name: str, factory: Callable[[], AdaptationMethod]) -> None:
    """Make ``model.method: <name>`` a shortcut for ``factory()`` (a method with its defaults)."""
    METHODS[name] = factory


def plain(value: Any) -> Any:
    """jsonargparse Namespaces as dicts (recursively), everything else unchanged."""
    if hasattr(value, "as_dict") and callable(value.as_dict):
        return value.as_dict()
    return value


def method_class(class_path: str) -> type[AdaptationMethod]:
    module_name, _, class_name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{OPTION}.class_path={class_path!r} cannot be imported: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, AdaptationMethod)):
        raise ValueError(f"{OPTION}.class_path={class_path!r} is not an AdaptationMethod subclass")
    return cls


def resolve_method(value: Any) -> AdaptationMethod:
    """A method from ``model.method``: a registry name, ``{class_path, init_args}`` or a built method."""
    value = plain(value)
    if isinstance(value, AdaptationMethod):
        return value
    if isinstance(value, str):
        if value not in METHODS:
            raise ValueError(f"{OPTION}={value!r} is unknown; choose one of: {', '.join(sorted(METHODS))}")
        return METHODS[value]()
    if isinstance(value, Mapping) and "class_path" in value and set(value) <= {"class_path", "init_args"}:
        cls = method_class(value["class_path"])
        init_args = plain(value.get("init_args")) or {}
        if not isinstance(init_args, Mapping):
            raise ValueError(f"{OPTION}.init_args must be a mapping, got {init_args!r}")
        return cls(**dict(init_args))
    raise ValueError(
        f"{OPTION} must be a method name ({', '.join(sorted(METHODS))}) or {{class_path: ..., init_args: ...}}, "
        f"got {value!r}"
    )


def method_spec(value: Any) -> dict[str, Any]:
    """``model.method`` in its saved form (``{class_path, init_args}`` with every argument)."""
    return resolve_method(value).spec()


def method_classes() -> list[type[AdaptationMethod]]:
    """Every imported :class:`AdaptationMethod` subclass (the registered ones and a user's)."""
    found: list[type[AdaptationMethod]] = []
    pending = list(AdaptationMethod.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def adapter_kind(directory: Path) -> str | None:
    """The kind of adapter ``directory`` holds, as the method class that wrote it says; None for none."""
    for cls in method_classes():
        try:
            kind = cls.adapter_kind(directory)
        except (OSError, ValueError, AttributeError, TypeError):
            kind = None
        if kind is not None:
            return kind
    return None
