"""Fail fast and clearly when a Hugging Face hub name cannot be resolved offline (instead of minutes of retries)."""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"


def hub_offline_mode() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    if hub_offline_mode():
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_error(kind: str, name: str, option: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{option}: {kind} {name!r} is neither a local path nor in the Hugging Face cache, and the hub is not "
        f"reachable (offline). Download it once with network access, or point {option} at a local directory."
    )
