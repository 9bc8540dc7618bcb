"""One ``hycam sweep`` per sweep directory at a time: a lock file naming its holder (pid, host, start).

Why: two sweeps on one output directory used to prepare and run the same trials at once; one deleted the
directory of the trial the other was training, or removed its in-progress checkpoint as stale. The lock is a
file created exclusively (``O_EXCL`` also works on shared filesystems, where the sweeps of a cluster write),
holding the holder's pid, host and process start time. It is removed when the sweep ends, however it ends; one
left by a crashed sweep is recognised as stale when its holder was on this host and that process no longer runs
(the start time guards against a reused pid), and is then replaced with a warning. A lock held from another
host cannot be checked from here: the message names it and says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hycam_pl.sweeps.spec import SweepError

log = logging.getLogger(__name__)

LOCK_FILE = ".sweep.lock"


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat; fields[0] is field 3 (state)
    except (OSError, IndexError, ValueError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    started = holder.get("start_ticks")
    return started is None or _start_ticks(pid) in (None, started)


def describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {when}"


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[Path]:
    """Hold ``<sweep_dir>/.sweep.lock`` for the block; refuse (``SweepError``, one line) when a live sweep
    holds it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK_FILE
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "start_ticks": _start_ticks(os.getpid()),
    }
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if holder is None:
                continue  # released meanwhile: try again
            if holder.get("host") == me["host"] and not _alive(holder):
                log.warning(
                    "removing the stale sweep lock %s of a sweep that ended (%s)", path, describe(holder)
                )
                with contextlib.suppress(FileNotFoundError):
                    stale = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
                    os.replace(path, stale)  # only one remover wins the rename; the others retry
                    stale.unlink()
                continue
            where = (
                "" if holder.get("host") == me["host"] else " (another host: it cannot be checked from here)"
            )
            raise SweepError(
                f"sweep directory {sweep_dir} is in use by another hycam sweep ({describe(holder)}){where}; wait "
                f"for it to finish or pass another --output (remove {path} only if that sweep no longer runs)"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    else:
        raise SweepError(f"could not take the sweep lock {path}: it keeps changing hands")
    try:
        yield path
    finally:
        if (_read_holder(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
