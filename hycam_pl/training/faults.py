"""Crash safety for checkpoints: a ``CheckpointIO`` whose writes are atomic on every local filesystem.

Why: Lightning 2.6.6 ``TorchCheckpointIO.save_checkpoint`` -> ``_atomic_save`` serialises into memory, then
writes through an fsspec transaction whose local temporary file comes from ``tempfile.mkstemp()`` in the
*system* temp directory and is committed with ``shutil.move``. On the same filesystem that is an atomic
rename; when ``$TMPDIR`` and the checkpoint directory are on different filesystems (tmpfs ``/tmp``, network
or scratch storage for checkpoints: the usual cluster layout) ``shutil.move`` copies into the final path, so a
crash or SIGKILL mid-copy truncates the previous ``last.ckpt``. Nothing is fsynced either, and every save
needs the whole checkpoint's size free in ``/tmp``. :class:`AtomicCheckpointIO` writes next to the target,
fsyncs, and ``os.replace``-s, so the previous file stays intact until the new one is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from hycam_pl.io import remove_stale_temporaries, write_with_handle


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that never leaves a partial ``path`` (:mod:`hycam_pl.io`); stale temporaries of
    ``path`` left by killed writers are removed on success."""
    written = write_with_handle(path, lambda handle: torch.save(obj, handle))
    remove_stale_temporaries(written)
    return written


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with crash-safe local writes; remote (fsspec) paths keep Lightning's behaviour."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by {type(self).__name__}"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)


def install_atomic_checkpoint_io(trainer: Any) -> bool:
    """Swap the trainer's default ``TorchCheckpointIO`` for :class:`AtomicCheckpointIO`; True if swapped.

    A checkpoint IO the user chose (``trainer.plugins``, async or sharded strategies) is left alone.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False
