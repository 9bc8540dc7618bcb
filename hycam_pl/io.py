"""The one way hycam_pl writes a file: atomically, beside its target, readable like a plain ``open(path, "w")``.

Why one helper: results, trial markers, checkpoints, adapters, caches and sweep tables are all read by other
processes (a resumed run, a sweep's planner, a teammate's evaluation) while they may be rewritten, and a crash
or SIGKILL mid-write must leave the previous version intact. Every writer therefore stages a temporary file in
the *same* directory (a rename across filesystems is a copy, not atomic), fsyncs it, gives it the mode a plain
``open`` would (``mkstemp`` makes 0o600, which would hide checkpoints and adapters from other users) and only
then ``os.replace``-s it over the target. Standard library only: the sweep trial module, which runs on Ray
workers that import neither torch nor hycam_pl's models, uses it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def temp_prefix(path: Path) -> str:
    """Temporaries of ``path`` are ``.<name>.<random>.tmp`` beside it (hidden, and recognisable as stale)."""
    return f".{path.name}."


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` sets it to query it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_permissions(fd_or_path: int | str | os.PathLike) -> None:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask), for a ``mkstemp`` file, which is
    0o600: checkpoints and adapters must stay readable by teammates and serving processes as other users."""
    mode = 0o666 & ~current_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stage(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """A complete, fsynced temporary beside ``path`` written by ``write(temporary_path)``; returned, not yet in
    place (see :func:`commit`), so several files can be staged before any replaces its predecessor. The
    temporary is removed if ``write`` fails."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:  # writers that recreate the file (safetensors) are synced too
            os.fsync(handle.fileno())
        give_default_permissions(temporary)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def commit(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename a staged temporary over ``path`` (atomic on one filesystem) and make the rename durable."""
    os.replace(temporary, path)
    fsync_directory(Path(path).parent)
    return Path(path)


def write_atomically(
    path: str | os.PathLike, write: Callable[[str], None], *, make_parent: bool = True
) -> Path:
    """``write(temporary)`` then rename over ``path``: readers see the old file or the new one, never a part."""
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    return commit(stage(path, write), path)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomically(path, lambda temporary: Path(temporary).write_bytes(data))


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike, payload: Any, **dump_options: Any) -> Path:
    """``payload`` as indented JSON (``dump_options`` as for :func:`json.dumps`), atomically."""
    return write_text_atomically(path, json.dumps(payload, **{"indent": 2, **dump_options}) + "\n")


def write_with_handle(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Atomic write through an open handle: ``write(handle)`` (``torch.save``, ``fig.savefig``, line writers)."""

    def through_handle(temporary: str) -> None:
        encoding = None if "b" in mode else "utf-8"
        with open(temporary, mode, encoding=encoding) as handle:
            write(handle)

    return write_atomically(path, through_handle)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporaries of ``path`` that a SIGKILLed writer left behind (``.<name>.<random>.tmp``)."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f"{temp_prefix(path)}*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def place_staged_folder(
    staging: str | os.PathLike, target: str | os.PathLike, last: tuple[str, ...] = ()
) -> Path:
    """Put a complete staged folder's contents at ``target`` without deleting or renaming anything else.

    A new ``target`` is the staged folder renamed into place (atomic). Into an existing folder each staged entry
    replaces only the entry of the same name, the names in ``last`` (e.g. a config holding the weights' checksum)
    after the others; every other file in ``target`` stays. ``staging`` is gone afterwards.
    """
    staging, target = Path(staging), Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is an existing file, not a folder; nothing was written")
    if not target.exists():
        os.replace(staging, target)
        fsync_directory(target.parent)
        return target
    entries = sorted(
        staging.iterdir(), key=lambda p: (p.name in last, last.index(p.name) if p.name in last else 0)
    )
    for entry in entries:
        if entry.is_dir() != (target / entry.name).is_dir() and (target / entry.name).exists():
            raise ValueError(
                f"{target / entry.name} is in the way of the staged {entry.name}; nothing was replaced"
            )
    for entry in entries:
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():  # a staged sub-folder replaces its namesake as a whole
            shutil.rmtree(destination)
        os.replace(entry, destination)
    fsync_directory(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
