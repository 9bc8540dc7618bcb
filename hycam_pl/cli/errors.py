"""A one-line ``error: ...`` and an exit code at the command line instead of a traceback, for the errors hycam_pl
raises on purpose (bad configuration, data or numbers); a bug keeps its traceback.

Why with the CLI: only the commands (``hycam fit|test|...``, ``hycam sweep``, ``hycam export``) turn exceptions
into exit codes; the library raises them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hycam_pl

EXIT_BAD_INPUT = 2  # bad configuration or data: fix the input, retrying will not help
EXIT_DIVERGED = 3  # training stopped after too many non-finite steps: resume from a checkpoint with changes
TRACEBACK_ENV = "HYCAM_TRACEBACK"  # set to 1 to get the full traceback instead of the one-line error
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)

_PACKAGE_DIR = Path(hycam_pl.__file__).resolve().parent


def find_user_error(error: BaseException) -> BaseException | None:
    """The innermost error in ``error``'s cause chain that hycam_pl raised on purpose, or None.

    jsonargparse wraps a dataclass's ``ValueError`` in its own "Does not validate against any of the Union
    subtypes" error (keeping ours as ``__cause__``); Lightning re-raises ours unchanged. Anything not raised
    by hycam_pl code (a bug, a torch error) is not a user error and keeps its traceback.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    for candidate in reversed(chain):
        if isinstance(candidate, USER_ERRORS) and _raised_in_package(candidate):
            return candidate
    return None


def _raised_in_package(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def one_line(message: str) -> str:
    """Collapse a multi-line message so every user error is exactly one ``error:`` line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


@contextmanager
def report_user_errors() -> Iterator[None]:
    """Turn a hycam_pl configuration/data/numerical error into ``error: <message>`` on stderr and an exit code.

    Exit 2 for bad configuration or data, 3 for a run stopped by ``model.max_nonfinite_steps``. Any other
    exception (a bug) propagates with its traceback; ``HYCAM_TRACEBACK=1`` keeps tracebacks for all.
    """
    try:
        yield
    except Exception as error:
        found = find_user_error(error)
        if found is None or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            raise
        sys.stdout.flush()
        print(f"error: {one_line(str(found))}", file=sys.stderr, flush=True)
        code = EXIT_DIVERGED if isinstance(found, FloatingPointError) else EXIT_BAD_INPUT
        raise SystemExit(code) from None
