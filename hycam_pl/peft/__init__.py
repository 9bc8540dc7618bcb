"""HyCAM as a peft method: ``import hycam_pl.peft`` registers it, then ``get_peft_model(model, HyCAMPeftConfig())``,
``PeftModel.from_pretrained(base, folder)`` and ``transformers.Trainer`` work as with any peft method.

peft only registers methods named in its ``PeftType`` enum, so the ``HYCAM`` member is added to it first (once per
process). The folder format is shared with ``hycam_pl.save_adapter`` and ``hycam export``: see
hycam_pl/modulation/persistence.py.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method

from hycam_pl.modulation.persistence import PEFT_TYPE
from hycam_pl.peft.config import HyCAMPeftConfig
from hycam_pl.peft.layer import MERGE_REFUSAL, HyCAMLayer
from hycam_pl.peft.model import HyCAMModel


def _add_peft_type(name: str) -> PeftType:
    """Add member ``name`` to peft's ``PeftType`` enum (a ``str`` enum) unless it is there already."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    setattr(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


def _register() -> None:
    peft_type = _add_peft_type(PEFT_TYPE)
    if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is HyCAMModel:
        return
    register_peft_method(
        name=PEFT_TYPE.lower(), config_cls=HyCAMPeftConfig, model_cls=HyCAMModel, prefix=HyCAMModel.prefix
    )


_register()

__all__ = ["MERGE_REFUSAL", "HyCAMLayer", "HyCAMModel", "HyCAMPeftConfig"]
