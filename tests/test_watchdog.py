"""W5: a page stuck in C code is stopped by the worker's watchdog.

The stuck call is ``select()`` with a long timeout in a non-main thread, a C
call that no Python exception (so no Dramatiq time limit) can interrupt, as an
OpenCV or zbar call would be. It runs in a child interpreter, because the
watchdog's answer is to kill its own process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from batches.pipeline import watchdog

STUCK_CHILD = textwrap.dedent("""
    import logging, select, sys, threading
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from batches.pipeline import watchdog
    watchdog.enable(check_every=0.1)

    def read_page():
        with watchdog.page_time_limit(0.5, "Reading page 7 of batch test"):
            select.select([], [], [], 60)   # stuck in C for a minute

    t = threading.Thread(target=read_page)
    t.start()
    t.join()
    print("the watchdog did not stop the process")
""")


def test_w5_a_page_stuck_in_c_code_gets_its_worker_process_killed():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STUCK_CHILD], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - started
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)
    assert "did not stop" not in done.stdout
    assert "Reading page 7 of batch test has run for" in done.stderr and "past its time limit" in done.stderr
    assert took < 20  # well before the stuck call's own 60 s


def test_w5_pages_within_the_limit_are_left_alone():
    child = STUCK_CHILD.replace("select.select([], [], [], 60)", "select.select([], [], [], 0.1)")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "past its time limit" not in done.stderr


def test_without_the_watchdog_the_limit_is_not_armed():
    # The terminal command and the tests never start the watchdog: nothing is tracked.
    assert not watchdog.enabled()
    with watchdog.page_time_limit(0.001, "page"):
        time.sleep(0.01)
        assert watchdog.overdue() == []


def test_overdue_lists_what_ran_past_its_limit(monkeypatch):
    monkeypatch.setattr(watchdog, "enabled", lambda: True)
    with watchdog.page_time_limit(5, "slow page"):
        assert watchdog.overdue() == []
        late = watchdog.overdue(now=time.monotonic() + 6)
        assert [what for what, _s in late] == ["slow page"] and late[0][1] > 5
    assert watchdog.overdue(now=time.monotonic() + 6) == []
