"""Exit codes for a terminated or interrupted ``hycam`` command: 143 after SIGTERM, 130 after SIGINT (Ctrl-C).

Why: Lightning ends ``fit`` on SIGTERM by raising ``SIGTERMException``, a ``SystemExit`` without a code, so the
process exited 0; on SIGINT it calls ``sys.exit(1)``, which reads like any failure. A pre-empted or timed-out
run then looked finished: ``hycam fit && hycam test`` went on, and a sweep tested and recorded the trial as done
after a fraction of its steps. Here the command exits with the shell's conventional ``128 + signal`` code, so
everything that trusts exit statuses stops, and the sweep runner records the trial as interrupted (it resumes
from its ``last.ckpt`` next time).

During ``fit`` Lightning's own SIGTERM handler (which calls ours too) stops training at the next batch boundary,
so ``last.ckpt`` is never written half-way (and checkpoint files are written atomically anyway); outside
``fit`` (data preparation, evaluation) SIGTERM stops the command at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
INTERRUPTED_EXIT_CODES = (EXIT_SIGINT, EXIT_SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived while no training loop was there to stop gracefully (a BaseException, like Ctrl-C)."""


@contextmanager
def exit_codes_for_signals() -> Iterator[None]:
    """Run a command so that SIGTERM exits 143 and SIGINT 130, however the command's libraries end.

    Only from the main thread (Python delivers signals there); elsewhere the command runs unchanged.
    """
    received: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if (
            signal.getsignal(signal.SIGTERM) is on_sigterm
        ):  # Lightning's handler is not wrapping ours: stop now
            raise Terminated()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    try:
        previous = {
            s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_sigterm), (signal.SIGINT, on_sigint))
        }
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except (Terminated, KeyboardInterrupt, SystemExit):
        if received:
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:  # fit stopped gracefully (or finished while the signal was pending): still interrupted
        raise SystemExit(128 + received[0])
