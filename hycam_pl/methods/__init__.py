"""Adaptation methods as objects that own their options: how to modify the backbone, what extra loss it adds,
how its parameters are grouped for the optimizer, how its weights are saved and loaded, and what must match on
resume.

``model.method`` is a registered name (:func:`register_method`: the method with its defaults) or
``{class_path, init_args}`` naming any :class:`AdaptationMethod` subclass, including one outside hycam_pl.
"""

from hycam_pl.methods.base import (
    DEFAULT_METHOD,
    METHODS,
    AdaptationMethod,
    method_spec,
    register_method,
    resolve_method,
)
from hycam_pl.methods.full import FullFineTuning
from hycam_pl.methods.hycam import HyCAMMethod
from hycam_pl.methods.legacy import upgrade_hparams
from hycam_pl.methods.mixture import HydraLoRAMethod, MixtureMethod, MoLoRAMethod
from hycam_pl.methods.peft_methods import DoRAMethod, IA3Method, LoRAMethod, PeftMethod

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "AdaptationMethod",
    "DoRAMethod",
    "FullFineTuning",
    "HyCAMMethod",
    "HydraLoRAMethod",
    "IA3Method",
    "LoRAMethod",
    "MixtureMethod",
    "MoLoRAMethod",
    "PeftMethod",
    "method_spec",
    "register_method",
    "resolve_method",
    "upgrade_hparams",
]
