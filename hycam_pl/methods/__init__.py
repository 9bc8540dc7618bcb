"""Adaptation methods as small pluggable pieces: how to modify the backbone, what extra loss it adds, how its
parameters are grouped for the optimizer, and how its weights are saved.

Register a new one with :func:`register_method`; ``MultiTaskLM(method=<name>)`` picks it up by name.
"""

from hycam_pl.methods.base import METHODS, AdaptationMethod, build_method, register_method
from hycam_pl.methods.full import FullFineTuning
from hycam_pl.methods.hycam import HyCAMMethod
from hycam_pl.methods.mixture import MixtureMethod
from hycam_pl.methods.peft_methods import PeftMethod

__all__ = [
    "METHODS",
    "AdaptationMethod",
    "FullFineTuning",
    "HyCAMMethod",
    "MixtureMethod",
    "PeftMethod",
    "build_method",
    "register_method",
]
