"""Running one function over many items in forked workers (batches/omr/forked.py)."""

import os
import time

import pytest

from batches.omr.forked import WorkerError, ordered_map


def _slow_first(x):
    # The first items take longest: a worker finishing early must not put its
    # result ahead of theirs.
    time.sleep(0.02 * (6 - x) if x < 6 else 0)
    return x * x, os.getpid()


def test_results_come_in_the_items_order_from_several_workers():
    got = list(ordered_map(_slow_first, list(range(12)), 3))
    assert [v for v, _pid in got] == [x * x for x in range(12)]
    pids = {pid for _v, pid in got}
    assert os.getpid() not in pids and len(pids) >= 2


def test_one_job_runs_in_this_process():
    got = list(ordered_map(_slow_first, list(range(4)), 1))
    assert {pid for _v, pid in got} == {os.getpid()}


def _fails_on_three(x):
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def test_an_exception_in_a_worker_is_raised_after_the_results_before_it():
    seen = []
    with pytest.raises(WorkerError, match="ValueError: item 3 is bad"):
        for v in ordered_map(_fails_on_three, list(range(8)), 2):
            seen.append(v)
    assert seen == [0, 1, 2]


def _dies_on_two(x):
    if x == 2:
        os._exit(3)
    return x


def test_a_worker_that_dies_is_an_error_not_a_hang():
    seen = []
    with pytest.raises(WorkerError, match="ended"):
        for v in ordered_map(_dies_on_two, list(range(6)), 2):
            seen.append(v)
    assert seen == [0, 1]


def test_the_workers_end_when_the_results_are_no_longer_wanted():
    results = ordered_map(_slow_first, list(range(10)), 2)
    assert next(results)[0] == 0
    results.close()  # stops and reaps the workers; a worker left behind would hang here
    assert list(ordered_map(_slow_first, [7], 2))[0][0] == 49


def test_the_default_number_of_workers_is_the_idle_cores(monkeypatch):
    from batches.omr import forked

    monkeypatch.setattr(forked, "usable_cores", lambda: 4)
    for load, workers in [(0.0, 4), (0.3, 4), (1.5, 3), (3.2, 1), (9.0, 1)]:
        monkeypatch.setattr(forked.os, "getloadavg", lambda load=load: (load, load, load))
        assert forked.idle_cores() == workers, load
