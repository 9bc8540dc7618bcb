"""Crash safety for checkpoints: a ``CheckpointIO`` whose writes are atomic on every local filesystem, and a
``last.ckpt`` that is the end of training (:class:`FinalLastCheckpoint`).

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
from lightning.pytorch.callbacks import Callback

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


class FinalLastCheckpoint(Callback):
    """``last.ckpt`` is the end of training, whatever the checkpoint interval.

    Why: ``ModelCheckpoint(save_last=True, every_n_train_steps=n)`` writes ``last`` only every ``n`` steps (and
    at the end only when it never wrote one), so with ``max_steps`` not a multiple of ``n`` the run's
    ``last.ckpt`` held an earlier step than its exported ``adapter/``, and ``test --ckpt_path last`` (what sweeps
    run) silently evaluated older weights. At the end of a completed ``fit`` every ``save_last`` checkpoint
    callback that has not saved this step saves it now. An interrupted fit (SIGTERM, an exception) does not reach
    here: its ``last.ckpt`` stays the last complete save.
    """

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        for callback in trainer.checkpoint_callbacks:
            if (
                not getattr(callback, "save_last", False)
                or callback._last_global_step_saved == trainer.global_step
            ):
                continue
            callback._last_checkpoint_saved = (
                ""  # "link" mode would link the older step's file: write this one
            )
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def install_final_last_checkpoint(trainer: Any) -> None:
    """Add :class:`FinalLastCheckpoint` to the trainer's callbacks (once)."""
    if not any(isinstance(c, FinalLastCheckpoint) for c in trainer.callbacks):
        trainer.callbacks.insert(0, FinalLastCheckpoint())
