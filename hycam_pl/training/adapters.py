"""A method's adapter folder from trainable tensors alone: the model is built on the meta device (no backbone
weights read or allocated), the trainable tensors are put in, and the method's own ``save`` writes the folder.

Used at the end of a sharded ``fit`` (the gathered trainable weights) and by ``hycam export`` (a checkpoint's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hycam_pl.modulation.persistence import check_size_limits


def write_adapter(module: Any, trainable: dict[str, torch.Tensor], directory: str | os.PathLike) -> Path:
    """The method's adapter folder from ``{"model.<name>": tensor}`` trainable weights, without the backbone's."""
    if not module.method.exports_adapter:
        raise ValueError(
            f"model.method={module.method.name!r} trains the whole model and has no adapter to export; "
            "use the checkpoint itself"
        )
    # Sizes in the checkpoint's hyper-parameters are bounded before anything is built from them.
    check_size_limits(dict(module.hparams), "the checkpoint's hyper_parameters")
    model = module.build_model(structure_only=True)  # meta device: no backbone weights read or allocated
    wanted = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {k.removeprefix("model."): v for k, v in trainable.items()}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} trainable tensors of model.method={module.method.name!r} "
            f"(e.g. {missing[:3]}); was it saved by this method and its options?"
        )
    model.load_state_dict({k: state[k] for k in wanted}, strict=False, assign=True)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
    module.method.save(model, str(directory))
    return Path(directory)
