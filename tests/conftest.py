"""Shared fixtures: the people (an owner, a colleague, an outsider, an admin),
API clients, a private media root per test, Dramatiq's StubBroker with a real
Worker, and ZIPs of simulated answer sheets with their ground truth."""

from __future__ import annotations

import io
import os
import random
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import dramatiq
import pytest
from django.test import Client

from batches.models import ApiToken

TEMPLATE = "a4-20q-4"


# ---------------------------------------------------------------- people


@pytest.fixture
def owner(django_user_model):
    """Alice, staff, who uploads the batches."""
    return django_user_model.objects.create_user("alice", password="alice-pw-123", is_staff=True)


@pytest.fixture
def colleague(django_user_model):
    """Bob, staff too, who must not see Alice's batches."""
    return django_user_model.objects.create_user("bob", password="bob-pw-123", is_staff=True)


@pytest.fixture
def outsider(django_user_model):
    """Eve, a logged-in user who is not staff."""
    return django_user_model.objects.create_user("eve", password="eve-pw-123", is_staff=False)


@pytest.fixture
def admin_user(django_user_model):
    """Root, a superuser who sees every batch."""
    return django_user_model.objects.create_superuser("root", password="root-pw-123")


def token_client(user) -> Client:
    """A client sending ``Authorization: Bearer`` for ``user``."""
    _row, token = ApiToken.objects.issue(user, name="tests")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def api(owner) -> Client:
    return token_client(owner)


@pytest.fixture
def colleague_api(colleague) -> Client:
    return token_client(colleague)


# ---------------------------------------------------------------- storage and workers


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Every test writes files under its own temporary media root."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.OMR_PROGRESS_INTERVAL = 0.5
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def empty_cache():
    """The cache (failed-login counts) starts empty in every test."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def broker():
    """The StubBroker the test settings install (omrsite/settings_test.py), emptied around each test."""
    stub = dramatiq.get_broker()
    _fresh_queues(stub)
    stub.emit_after("process_boot")
    yield stub
    _fresh_queues(stub)


def _fresh_queues(stub) -> None:
    # New queue objects: a worker stopped mid-test leaves messages it took but
    # never acknowledged, and their count would make every later join() hang.
    import queue

    for name in list(stub.queues):
        stub.queues[name] = queue.Queue()
    stub.dead_letters_by_queue.clear()


@pytest.fixture
def worker(broker):
    """A real Dramatiq Worker (two threads) consuming the stub broker."""
    w = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    w.start()
    yield w
    w.stop()


def run_queue(broker, worker, fail_fast: bool = True) -> None:
    """Wait until every message, including the ones sent while waiting, is done.
    ``fail_fast`` raises the first actor exception (off for tests of retries)."""
    for _ in range(20):
        broker.join("default", fail_fast=fail_fast)
        worker.join()
        # Delay queues (retries) are in broker.queues too.
        if all(q.unfinished_tasks == 0 for q in broker.queues.values()):
            return
    raise AssertionError("queue did not drain")


# ---------------------------------------------------------------- sheets


@dataclass(frozen=True)
class SimSheet:
    name: str
    jpeg: bytes
    answers: dict
    student: str


@lru_cache(maxsize=64)
def simulated_sheet(index: int, template: str = TEMPLATE, preset: str = "clean") -> SimSheet:
    """One filled-in sheet from the project's simulator (cached: it takes ~0.2 s)."""
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(template)
    answers = simulate.random_answers(t, 1, random.Random(index))
    student = f"S{1000 + index}"
    sim = simulate.simulate_sheet(t, answers, seed=index, preset=preset, exam="EXAM1", student=student)
    return SimSheet(f"scan_{index + 1:03d}.jpg", sim.encode_jpeg(), sim.truth["answers"], student)


def make_zip(entries: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def sheets_zip(count: int, extra: list[tuple[str, bytes]] = ()) -> tuple[bytes, list[SimSheet]]:
    """A ZIP of ``count`` simulated sheets (+ ``extra`` entries) and the sheets."""
    sheets = [simulated_sheet(i) for i in range(count)]
    return make_zip([(s.name, s.jpeg) for s in sheets] + list(extra)), sheets


@pytest.fixture
def sheet_zip():
    return sheets_zip


def parse_sse(raw: bytes) -> list[dict]:
    """SSE frames as dicts: {"comment"} or {"id", "event", "data"} (data lines joined)."""
    frames = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        frame: dict = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame["comment"] = line[1:].strip()
                continue
            key, _, value = line.partition(": ")
            frame[key] = frame[key] + "\n" + value if key == "data" and "data" in frame else value
        frames.append(frame)
    return frames


# ---------------------------------------------------------------- browser

CHROMIUM = os.environ.get("OMR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def browser():
    """Debian's Chromium, headless, driven by Playwright (the browser tests)."""
    import playwright.sync_api as playwright_api

    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
