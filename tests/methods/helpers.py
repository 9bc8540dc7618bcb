"""Methods built as a config names them: by the registered name's class with ``init_args``."""

from __future__ import annotations

from typing import Any

from hycam_pl.methods import AdaptationMethod, resolve_method


def build(name: str, **init_args: Any) -> AdaptationMethod:
    """``model.method: {class_path: <the class registered as name>, init_args: {...}}``."""
    cls = type(resolve_method(name))
    return resolve_method({"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args})
