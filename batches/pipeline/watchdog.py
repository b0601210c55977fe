"""A time limit on reading one page that holds even when the engine is stuck in
C code (W5 in docs/reliability.md).

Dramatiq's own time limit raises an exception in the worker thread, which
Python only delivers between bytecodes: a thread inside an OpenCV or zbar call
never sees it. So the pipeline wraps each page in ``page_time_limit()``, and a
watchdog thread of the worker process stops the whole process with SIGKILL
when a page has run past the limit. The broker then gives the message back
(as for any killed worker, W1), the page's attempt counter has already been
raised, and after ``OMR_SHEET_MAX_ATTEMPTS`` tries the page is failed and the
batch goes on (W2). Pages normally take tens of milliseconds, so the limit is
generous; the cost while nothing is stuck is one clock read per page.

Outside a worker process (the terminal command, tests) the limit is off unless
``enable()`` is called: killing an administrator's shell is not the answer there.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_running: dict[int, tuple[float, float, str]] = {}  # thread id -> (started, limit, what)
_thread: threading.Thread | None = None


def enable(check_every: float = 1.0) -> None:
    """Start this process's watchdog thread (once)."""
    global _thread
    with _lock:
        if _thread is not None and _thread.is_alive():
            return
        _thread = threading.Thread(target=_watch, args=(check_every,), name="omr-watchdog", daemon=True)
        _thread.start()


def enabled() -> bool:
    return _thread is not None and _thread.is_alive()


@contextmanager
def page_time_limit(seconds: float, what: str):
    """Run the block under a limit of ``seconds``; past it the process is killed
    (only once ``enable()`` has started the watchdog; a limit <= 0 is none)."""
    if seconds <= 0 or not enabled():
        yield
        return
    key = threading.get_ident()
    _running[key] = (time.monotonic(), seconds, what)
    try:
        yield
    finally:
        _running.pop(key, None)


def overdue(now: float | None = None) -> list[tuple[str, float]]:
    """What has run past its limit: (description, seconds running)."""
    now = time.monotonic() if now is None else now
    return [(what, now - started) for started, limit, what in list(_running.values()) if now - started > limit]


def _watch(check_every: float) -> None:
    while True:
        time.sleep(check_every)
        late = overdue()
        if late:
            what, seconds = late[0]
            # Logged first: this line is all that says why the worker went away.
            logger.critical("%s has run for %.0f s, past its time limit: stopping worker process %d so that "
                            "the page is tried again (and failed after a few tries)", what, seconds, os.getpid())
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
