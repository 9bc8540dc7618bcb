"""The adapted model from a module's options: the backbone (loaded, or only its structure) with the method
applied, or loaded from ``model.adapter`` by the method, with activation checkpointing as configured.

Why apart from sharding: every build goes through here (plain runs, each rank's FSDP2/ZeRO-3 build, the meta
model ``hycam export`` fills); sharding decides *where* and *when* to build, not *what*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hycam_pl.backbone import load_backbone
from hycam_pl.methods import AdaptationMethod
from hycam_pl.training.sharding import backbone_structure, meta_backbone


def build_model(
    hp: Mapping[str, Any], method: AdaptationMethod, structure_only: bool = False, partitioned: bool = False
) -> torch.nn.Module:
    """The backbone of ``hp`` (a ``MultiTaskLM``'s hyper-parameters) with ``method`` applied. ``structure_only``:
    on the meta device, no weights read (the FSDP2 build loads them into each rank's shards afterwards);
    ``partitioned``: the same structure allocated where the surrounding context puts it (ZeRO-3's
    ``zero.Init``: partitioned)."""
    if structure_only:
        model = meta_backbone(hp["backbone"], hp["dtype"], hp["attn_implementation"])
    elif partitioned:
        model = backbone_structure(hp["backbone"], hp["dtype"], hp["attn_implementation"])
    else:
        with torch.device("cpu"):  # as before: the same weights whatever device the trainer uses
            model = load_backbone(
                hp["backbone"],
                dtype=hp["dtype"],
                attn_implementation=hp["attn_implementation"],
                init_seed=hp["init_seed"],
            )
    if hp["adapter"] is not None and not (structure_only or partitioned):
        model = method.load(model, hp["adapter"])  # the method applied, with the saved weights
    else:
        model = method.apply(model)
    if hp["activation_checkpointing"]:
        reentrant = hp["activation_checkpointing"] == "reentrant"
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    # ``from_pretrained`` returns a model in eval mode, and Lightning (>= 2.2) keeps the modes it finds at the
    # start of fit: without this, HyCAM's router would route by noise-free argmax during training (no Gumbel
    # noise, no straight-through gradient: the router collapses) and peft's dropout would be off. Evaluation
    # loops still switch to eval mode and back.
    return model.train()
