"""Decide quickly whether the Hugging Face Hub can be reached, and force offline lookups when it cannot.

Why: without a network, ``datasets``/``transformers`` retry for tens of seconds before failing. We check
once (environment flags, then a short TCP connect) and, when offline, read only the local cache so a
missing name fails in about a second with a message that says so.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_PROBE_TIMEOUT_S = 3.0


def offline_flag_set() -> bool:
    """True when the user asked for offline mode through one of the usual environment variables."""
    return any(os.environ.get(flag, "").strip().lower() in _TRUE for flag in _OFFLINE_FLAGS)


@functools.cache
def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether a TCP connection to the Hub endpoint (or the HTTPS proxy, when one is set) succeeds.

    The answer is cached for the process: a run does not flip between online and offline.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if not target.hostname:
        return False
    return _reachable(target.hostname, target.port or (443 if target.scheme == "https" else 80))


def hub_offline() -> bool:
    """True when Hub lookups must not be attempted: offline flag set, or the Hub is unreachable."""
    return offline_flag_set() or not hub_reachable()


@contextlib.contextmanager
def offline_lookups() -> Iterator[None]:
    """Make ``datasets`` and ``huggingface_hub`` resolve names from the local cache only, for this block.

    Both libraries read their offline switch from a module constant at call time; we flip it and
    restore it. Not thread-safe, which is fine for data setup.
    """
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
