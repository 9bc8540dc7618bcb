"""The method options of hycam_pl releases up to bdb89e0, and their translation into ``model.method``.

Those releases configured a method with several ``MultiTaskLM`` options: ``method`` (a name), ``hycam`` (the
HyCAM config, also the reference of a parameter-matched LoRA), ``method_options`` (the other methods' options),
``shared_lr`` and ``expert_lr`` (HyCAM's learning rates). A method now owns its options, so:

- a *config* that still sets one of the retired keys is refused with one line that names ``model.method`` and
  shows the equivalent setting (:func:`retired_options_error`);
- a *checkpoint* written by those releases is read with its options translated, and one warning
  (:func:`upgrade_hparams`), so it resumes, evaluates and exports as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import yaml

from hycam_pl.methods.base import METHODS, method_spec, plain
from hycam_pl.modulation.config import ROUTING_DEFAULTS

log = logging.getLogger(__name__)

RETIRED_OPTIONS = ("hycam", "method_options", "shared_lr", "expert_lr")
_PEFT_OWN = {
    "lora": ("r", "lora_alpha", "lora_dropout", "target_modules"),
    "dora": ("r", "lora_alpha", "lora_dropout", "target_modules"),
    "ia3": ("target_modules", "feedforward_modules"),
}
_CLASSES = {
    "hycam": "hycam_pl.methods.HyCAMMethod",
    "cam": "hycam_pl.methods.HyCAMMethod",
    "full": "hycam_pl.methods.FullFineTuning",
    "lora": "hycam_pl.methods.LoRAMethod",
    "dora": "hycam_pl.methods.DoRAMethod",
    "ia3": "hycam_pl.methods.IA3Method",
    "molora": "hycam_pl.methods.MoLoRAMethod",
    "hydralora": "hycam_pl.methods.HydraLoRAMethod",
}


def translate(options: Mapping[str, Any]) -> Any:
    """``model.method`` equivalent to the retired options in ``options`` (a name, or class_path/init_args)."""
    name = plain(options.get("method", "hycam"))
    if not isinstance(name, str):
        return name  # already the new form
    hycam = {k: v for k, v in dict(plain(options.get("hycam")) or {}).items() if v is not None}
    hycam.pop("class_path", None)
    hycam = dict(hycam.get("init_args", hycam))
    extra = dict(plain(options.get("method_options")) or {})
    rates = {k: options[k] for k in ("shared_lr", "expert_lr") if options.get(k) is not None}
    if name in ("hycam", "cam"):
        if name == "cam":
            hycam = {k: v for k, v in hycam.items() if k not in ROUTING_DEFAULTS}
            hycam["num_experts"] = 0
        init_args = {**hycam, **rates}
    elif name in _PEFT_OWN:
        own = {k: extra.pop(k) for k in _PEFT_OWN[name] if k in extra}
        if extra.pop("match_parameters", False):
            own["match_hycam"] = hycam
        init_args = {**own, **({"options": extra} if extra else {})}
    elif name in ("molora", "hydralora"):
        extra.pop("kind", None)
        init_args = extra
    else:
        return name
    if not init_args and name in METHODS:
        return name
    return {"class_path": _CLASSES[name], "init_args": init_args}


def retired_options_error(model: Any, where: str) -> str | None:
    """One line naming the retired ``model.*`` option(s) in ``model`` (a config's ``model`` section) and the
    ``model.method`` setting that replaces them; None when there are none."""
    model = plain(model)
    if not isinstance(model, Mapping):
        return None
    model = plain(model.get("init_args", model))
    found = [key for key in RETIRED_OPTIONS if isinstance(model, Mapping) and key in model]
    if not found:
        return None
    try:
        replacement = yaml.safe_dump(translate(model), default_flow_style=True, width=10_000).strip()
    except (TypeError, ValueError, AttributeError):
        replacement = "{class_path: ..., init_args: {...}}"
    keys = ", ".join(f"model.{key}" for key in found)
    return (
        f"{where}: {keys} {'is' if len(found) == 1 else 'are'} no longer an option: a method's options are set "
        f'in model.method (README "Choosing a method"); here: model.method: {replacement}'
    )


def upgrade_hparams(hparams: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's saved hyper-parameters with retired options translated into ``method`` (warned once);
    current ones are returned unchanged."""
    hparams = dict(hparams)
    if not any(key in hparams for key in RETIRED_OPTIONS) and not isinstance(hparams.get("method"), str):
        return hparams
    method = translate(hparams)
    for key in RETIRED_OPTIONS:
        hparams.pop(key, None)
    hparams["method"] = method_spec(method)
    log.warning("%s was written by an earlier hycam_pl: its method options are read as model.method", where)
    return hparams
