"""``hycam export CKPT OUT_DIR``: the portable adapter folder from any strategy's checkpoint.

A checkpoint holds the trainable weights (full tensors, gathered on save) and the hyper-parameters; the adapter
is written by the method's own ``save`` from a model whose frozen backbone is never loaded: it is built on the meta
device and only the trainable tensors are put in. Lightning's distributed checkpoint folders (FSDP2 with
``save_distributed_checkpoint: true``) and DeepSpeed checkpoint folders are consolidated first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from hycam_pl.methods import upgrade_hparams
from hycam_pl.training.sharding import deferred_build
from hycam_pl.training.validation import report_user_errors

USAGE = "hycam export CKPT OUT_DIR: write the adapter folder of a training checkpoint (file or folder)"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"hyper_parameters", "state_dict"}`` of a Lightning checkpoint file, a distributed checkpoint folder
    (FSDP2/ModelParallel) or a DeepSpeed checkpoint folder; ``state_dict`` keys as in ``MultiTaskLM``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if _is_distributed_checkpoint(path):  # torch.distributed.checkpoint folder (Lightning: meta.pt beside it)
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "full.pt"
            dcp_to_torch_save(path, target)
            checkpoint = torch.load(target, map_location="cpu", weights_only=False)
        meta = path / "meta.pt"
        if meta.is_file():
            checkpoint.update(torch.load(meta, map_location="cpu", weights_only=False))
        return checkpoint
    if _is_deepspeed_checkpoint(path):
        return _read_deepspeed(path)
    raise ValueError(
        f"{path} is a folder but neither a distributed checkpoint (.metadata) nor a DeepSpeed checkpoint"
    )


def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    """A checkpoint saved as a folder: FSDP2's distributed checkpoint or DeepSpeed's (one file per rank)."""
    path = Path(path)
    return path.is_dir() and (_is_distributed_checkpoint(path) or _is_deepspeed_checkpoint(path))


def _is_distributed_checkpoint(path: Path) -> bool:
    return (path / ".metadata").is_file()


def _is_deepspeed_checkpoint(path: Path) -> bool:
    return bool(_deepspeed_model_states(path)) or (path / "latest").is_file()


def _read_deepspeed(path: Path) -> dict[str, Any]:
    """DeepSpeed (ZeRO 2/3) folder: the client state holds the hyper-parameters; weights are consolidated to
    fp32 by DeepSpeed's own ``zero_to_fp32`` (only the trainable ones when frozen ones were excluded)."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise ValueError(f"{path} is a DeepSpeed checkpoint; reading it needs deepspeed installed") from None
    states = _deepspeed_model_states(path)
    if not states:
        raise ValueError(f"{path} is a DeepSpeed checkpoint folder without model states (*model_states.pt)")
    client = torch.load(states[0], map_location="cpu", weights_only=False)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=states[0].parent.name)
    # DeepSpeed names parameters relative to the wrapped LightningModule ("_forward_module." prefix at most).
    state = {k.removeprefix("_forward_module."): v for k, v in weights.items()}
    return {**client, "state_dict": state}


def _deepspeed_model_states(path: Path) -> list[Path]:
    """Rank 0's model-states file (client state: hyper-parameters), named by ZeRO stage: ``mp_rank_00_...``
    up to stage 2, ``zero_pp_rank_0_mp_rank_00_...`` at stage 3."""
    return sorted(path.glob("*/mp_rank_00_model_states.pt")) or sorted(
        path.glob("*/zero_pp_rank_0_mp_rank_00_model_states.pt")
    )


def module_from_checkpoint(checkpoint: dict[str, Any]):
    """A ``MultiTaskLM`` with the checkpoint's hyper-parameters; its backbone is not built (lazy)."""
    from hycam_pl.training import MultiTaskLM

    hparams = checkpoint.get("hyper_parameters")
    if not hparams:
        raise ValueError("the checkpoint has no hyper_parameters; was it saved by hycam fit?")
    hparams = upgrade_hparams(hparams)
    with deferred_build():
        return MultiTaskLM(**{k: v for k, v in hparams.items() if not k.startswith("_")})


def write_adapter(module: Any, trainable: dict[str, torch.Tensor], directory: str | os.PathLike) -> Path:
    """The method's adapter folder from ``{"model.<name>": tensor}`` trainable weights, without the backbone's."""
    if not module.method.exports_adapter:
        raise ValueError(
            f"model.method={module.method.name!r} trains the whole model and has no adapter to export; "
            "use the checkpoint itself"
        )
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


def export(checkpoint_path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    checkpoint = read_checkpoint(checkpoint_path)
    module = module_from_checkpoint(checkpoint)
    return write_adapter(module, checkpoint.get("state_dict", {}), directory)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hycam export", description=USAGE)
    parser.add_argument("checkpoint", help="a .ckpt file, or a distributed / DeepSpeed checkpoint folder")
    parser.add_argument("out_dir", help="the adapter folder to write")
    args = parser.parse_args(argv)
    with report_user_errors():
        target = export(args.checkpoint, args.out_dir)
        print(f"Wrote the adapter to {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
