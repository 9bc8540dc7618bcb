"""The portable adapter folder from any strategy's checkpoint (the ``hycam export`` command: hycam_pl.cli.export).

A checkpoint holds the trainable weights (full tensors, gathered on save) and the hyper-parameters; the adapter
is written by the method's own ``save`` from a model whose frozen backbone is never loaded: it is built on the meta
device and only the trainable tensors are put in. Lightning's distributed checkpoint folders (FSDP2 with
``save_distributed_checkpoint: true``) and DeepSpeed checkpoint folders are consolidated first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hycam_pl.io import place_staged_folder
from hycam_pl.methods.base import adapter_kind
from hycam_pl.training.adapters import write_adapter
from hycam_pl.training.checkpoints import module_options, read_checkpoint
from hycam_pl.training.module import MultiTaskLM
from hycam_pl.training.resume import check_writable
from hycam_pl.training.sharding import deferred_build

USAGE = "hycam export CKPT OUT_DIR: write the adapter folder of a training checkpoint (file or folder)"


def module_from_checkpoint(checkpoint: dict[str, Any]):
    """A ``MultiTaskLM`` with the checkpoint's hyper-parameters; its backbone is not built (lazy)."""
    with deferred_build():
        return MultiTaskLM(**module_options(checkpoint, "hycam export CKPT"))


def export(checkpoint_path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Write the adapter of ``checkpoint_path`` into ``directory`` without deleting or renaming anything the
    export did not write (see :func:`check_export_target`)."""
    target = Path(directory)
    check_export_target(target)  # before the (possibly large) checkpoint is read
    checkpoint = read_checkpoint(checkpoint_path, "hycam export CKPT")
    module = module_from_checkpoint(checkpoint)
    return write_adapter_into(module, checkpoint.get("state_dict", {}), target)


# --------------------------------------------------------------------------------------- the output folder
def check_export_target(target: Path) -> None:
    """Refuse a target that is an existing file, or a folder that cannot take new files. One line each."""
    if target.exists() and not target.is_dir():
        raise ValueError(
            f"hycam export: {target} is an existing file, not a folder; give a new or empty folder "
            "(nothing was written)"
        )
    check_writable("hycam export OUT_DIR", target)


def write_adapter_into(module: Any, trainable: dict[str, torch.Tensor], target: Path) -> Path:
    """The adapter written into a fresh staging folder, then moved into ``target``: a new folder is renamed into
    place whole; an existing one must be empty or hold a previous export of the same kind, and only the files
    this export writes are replaced there (other files are kept)."""
    existed = target.is_dir()
    parent = target if existed else target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=".hycam-export-", suffix=".tmp"))
    try:
        staged = staging / "adapter"
        write_adapter(module, trainable, staged)
        if not existed:
            return place_staged_folder(staged, target)
        others = sorted(p.name for p in target.iterdir() if p != staging)
        if others:
            previous, new = adapter_kind(target), adapter_kind(staged)
            if previous is None:
                shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
                raise ValueError(
                    f"hycam export: {target} is not empty and holds no adapter ({shown}); export into a new or "
                    "empty folder (nothing was written or deleted)"
                )
            if previous != new:
                raise ValueError(
                    f"hycam export: {target} holds a {previous} adapter, this checkpoint's is {new}; export "
                    "into a new or empty folder (nothing was written or deleted)"
                )
        index = module.method.adapter_index_file  # the file naming and checking the others: last
        place_staged_folder(staged, target, last=(index,) if index else ())
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
