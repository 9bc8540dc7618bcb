"""CAM / HyCAM attention modulation for stock Hugging Face decoders. Plain PyTorch + transformers: no Lightning."""

from hycam_pl.modulation.architectures import (
    ARCHITECTURES,
    ArchitectureSpec,
    UnsupportedArchitectureError,
    register_architecture,
)
from hycam_pl.modulation.balance import LayerRouting
from hycam_pl.modulation.config import HyCAMConfig
from hycam_pl.modulation.model import attach, balance_loss, count_parameters, detach, modulated_layers
from hycam_pl.modulation.persistence import (
    AdapterError,
    adapter_state_dict,
    base_identity,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from hycam_pl.modulation.routing import find_state, is_attached, routing_statistics, without_routing_records

__all__ = [
    "ARCHITECTURES",
    "AdapterError",
    "ArchitectureSpec",
    "HyCAMConfig",
    "LayerRouting",
    "UnsupportedArchitectureError",
    "adapter_state_dict",
    "attach",
    "balance_loss",
    "base_identity",
    "count_parameters",
    "detach",
    "find_state",
    "is_attached",
    "load_adapter",
    "modulated_layers",
    "read_adapter_config",
    "register_architecture",
    "routing_statistics",
    "without_routing_records",
    "save_adapter",
]
