"""One function over many items in forked worker processes, the results in
the items' order: how the command line reads a folder of scans on every core.

A forked worker shares what its parent has already imported and loaded
(numpy, OpenCV, the templates), so it starts in milliseconds, where a fresh
interpreter would pay the imports again. The workers take the next item as
they finish one, so a slow sheet does not hold up the others. Where there is
no ``fork`` (Windows), or one job is asked for, the items are done in this
process, one after another.
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

# select, pickle, signal and traceback are imported where they are used: a
# command that reads one image (no workers) does not pay for them.

T = TypeVar("T")
R = TypeVar("R")

_INDEX = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


class WorkerError(RuntimeError):
    """The function raised in a worker, or a worker ended without answering;
    ``str(exc)`` holds the worker's traceback when there is one."""


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """The usable cores not already busy: their number less the load average,
    rounded up, at least 1. On a machine already busy, more workers would
    only share the same cores (and each pays its own start)."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available (Windows): take the machine as idle
        load = 0.0
    return max(1, min(cores, math.ceil(cores - load)))


def ordered_map(fn: Callable[[T], R], items: Sequence[T], jobs: int,
                worker_setup: Callable[[], None] | None = None) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in the items' order as soon as
    each and those before it are done, by at most ``jobs`` forked workers
    (``worker_setup()`` runs first in each). ``fn``'s results travel back
    pickled. An exception in ``fn`` is raised here as ``WorkerError``, after
    the results before it."""
    jobs = min(jobs, len(items))
    if jobs <= 1 or not hasattr(os, "fork"):
        for item in items:
            yield fn(item)
        return
    # Whatever this process has buffered would otherwise be written again by each worker.
    sys.stdout.flush()
    sys.stderr.flush()
    workers: list[_Worker] = []
    try:
        for _ in range(jobs):
            workers.append(_Worker.start(fn, items, worker_setup, workers))
        yield from _dispatch(workers, len(items))
    finally:
        for w in workers:
            w.stop()


def _dispatch(workers: list[_Worker], n: int) -> Iterator:
    done: dict[int, tuple[bool, object]] = {}
    next_task = next_out = 0

    def give(w: _Worker) -> None:
        nonlocal next_task
        if next_task < n and not w.finished:
            w.give(next_task)
            next_task += 1

    for w in workers:
        give(w)
    import select

    while next_out < n:
        busy = {w.results.fileno(): w for w in workers if w.task is not None}
        if not busy:  # every worker ended without answering: nothing can do what is left
            done.update({i: (False, "the worker processes ended without an answer") for i in range(next_task, n)})
            next_task = n
        else:
            ready, _, _ = select.select(list(busy), [], [])
            for fd in ready:
                w = busy[fd]
                index, answer = w.task, w.receive()
                done[index] = answer
                give(w)
        while next_out in done:
            ok, value = done.pop(next_out)
            if not ok:
                raise WorkerError(value)
            yield value
            next_out += 1


class _Worker:
    """A forked process reading item indices from one pipe and writing
    pickled ``(ok, result or traceback)`` to another."""

    def __init__(self, pid: int, tasks, results):
        self.pid, self.tasks, self.results = pid, tasks, results
        self.task: int | None = None
        self.finished = False

    @classmethod
    def start(cls, fn: Callable, items: Sequence, worker_setup: Callable[[], None] | None,
              earlier: list[_Worker]) -> _Worker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the caller's code
            code = 1
            try:
                os.close(task_w)
                os.close(result_r)
                # The earlier workers' pipes: held open here, they would
                # never see their end.
                for w in earlier:
                    w.tasks.close()
                    w.results.close()
                _serve(fn, items, worker_setup, os.fdopen(task_r, "rb"), os.fdopen(result_w, "wb"))
                code = 0
            finally:
                os._exit(code)
        os.close(task_r)
        os.close(result_w)
        return cls(pid, os.fdopen(task_w, "wb"), os.fdopen(result_r, "rb"))

    def give(self, index: int) -> None:
        self.task = index
        self.tasks.write(_INDEX.pack(index))
        self.tasks.flush()

    def receive(self) -> tuple[bool, object]:
        head = self.results.read(_LENGTH.size)
        self.task = None
        import pickle

        if len(head) < _LENGTH.size:
            self.finished = True
            return False, "a worker process ended without an answer (killed, or out of memory?)"
        size = _LENGTH.unpack(head)[0]
        data = self.results.read(size)
        if len(data) < size:
            self.finished = True
            return False, "a worker process ended in the middle of its answer"
        return pickle.loads(data)

    def stop(self) -> None:
        """Close the task pipe (an idle worker then exits); a worker still
        busy when the results are no longer wanted is ended."""
        if self.task is not None and not self.finished:
            import signal

            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for f in (self.tasks, self.results):
            try:
                f.close()
            except OSError:
                pass
        os.waitpid(self.pid, 0)


def _serve(fn: Callable, items: Sequence, worker_setup: Callable[[], None] | None, tasks, results) -> None:
    import pickle
    import traceback

    if worker_setup is not None:
        worker_setup()
    while True:
        head = tasks.read(_INDEX.size)
        if len(head) < _INDEX.size:
            return  # no more work
        try:
            answer: tuple[bool, object] = (True, fn(items[_INDEX.unpack(head)[0]]))
        except Exception:  # noqa: BLE001 - the caller gets the traceback
            answer = (False, traceback.format_exc())
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        results.write(_LENGTH.pack(len(data)) + data)
        results.flush()
