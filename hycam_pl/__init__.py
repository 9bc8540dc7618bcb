"""hycam_pl: CAM / HyCAM multi-task adaptation for Hugging Face decoder LLMs, on PyTorch Lightning."""

from hycam_pl.modulation import (
    HyCAMConfig,
    adapter_state_dict,
    attach,
    balance_loss,
    count_parameters,
    detach,
    load_adapter,
    read_adapter_config,
    routing_statistics,
    save_adapter,
    without_routing_records,
)

__all__ = [
    "HyCAMConfig",
    "adapter_state_dict",
    "attach",
    "balance_loss",
    "count_parameters",
    "detach",
    "load_adapter",
    "read_adapter_config",
    "routing_statistics",
    "save_adapter",
    "without_routing_records",
]
__version__ = "0.1.0"
