"""``HyCAMPeftConfig``: HyCAM's options as a peft config, so ``get_peft_model`` and ``PeftModel.from_pretrained``
know the method.

The HyCAM options are not restated here: they are copied from :class:`hycam_pl.HyCAMConfig`'s fields (same names,
same defaults) and validated by building a ``HyCAMConfig``, so the two cannot drift apart. ``num_experts=0`` is CAM.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from peft.config import PeftConfig
from peft.utils import PeftType

from hycam_pl.modulation import HyCAMConfig
from hycam_pl.modulation.persistence import PEFT_TYPE


def _with_hycam_options(cls: type) -> type:
    """Add every :class:`HyCAMConfig` field (name, type, default) to ``cls`` before ``@dataclass`` reads it."""
    annotations = cls.__dict__.get("__annotations__", {})
    for option in fields(HyCAMConfig):
        annotations[option.name] = option.type
        default = option.default if option.default is not MISSING else None
        setattr(cls, option.name, field(default=default, metadata={"help": f"HyCAMConfig.{option.name}"}))
    cls.__annotations__ = annotations
    return cls


@dataclass
@_with_hycam_options
class HyCAMPeftConfig(PeftConfig):
    """CAM / HyCAM (METHOD.md) as a peft method: every option of :class:`hycam_pl.HyCAMConfig`, plus what peft
    needs. The tuner wraps the self-attention block of each decoder layer chosen by ``layers``.

    - ``target_modules`` is filled in from ``layers`` when the adapter is added (leave it unset).
    - ``modules_to_save`` is filled in with the layers' norms when ``train_norms=True``: peft keeps a trained copy
      of each norm per adapter, so other adapters and ``disable_adapter()`` still see the frozen ones.
    - ``base_model_identity`` is the base model's identity (type, sizes, name), recorded when the adapter is
      created; loading onto another base model is refused.
    - ``weights_sha256`` is the checksum a folder written by hycam_pl carries (``hycam export``, ``save_adapter``);
      peft's own ``save_pretrained`` writes none.
    """

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Filled in from `layers`: the attention blocks HyCAM wraps."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Filled in with the layers' norms when train_norms=True."}
    )
    base_model_identity: dict[str, Any] | None = field(
        default=None, metadata={"help": "The base model's identity; another base model is refused."}
    )
    weights_sha256: str | None = field(
        default=None, metadata={"help": "Checksum of adapter_model.safetensors in folders hycam_pl writes."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType[PEFT_TYPE]
        resolved = HyCAMConfig(**self.hycam_options())  # validates, and fills in the routing defaults
        for name, value in resolved.to_dict().items():
            setattr(self, name, value)

    def hycam_options(self) -> dict[str, Any]:
        return {option.name: getattr(self, option.name) for option in fields(HyCAMConfig)}

    def to_hycam_config(self) -> HyCAMConfig:
        """The equivalent :class:`hycam_pl.HyCAMConfig` (what ``hycam_pl.attach`` takes)."""
        return HyCAMConfig.from_dict(self.hycam_options())

    @classmethod
    def from_hycam_config(cls, config: HyCAMConfig, **peft_options: Any) -> HyCAMPeftConfig:
        values = {k: v for k, v in config.to_dict().items() if v is not None}
        return cls(**values, **peft_options)

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        # A checksum describes the file it was written with; peft rewrites the weights, so it must not carry one.
        values["weights_sha256"] = None
        return values
