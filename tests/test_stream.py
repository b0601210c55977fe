"""The progress stream (docs/reliability.md S1-S4): the real SSE response of the async
view, consumed through Django's AsyncClient and parsed frame by frame."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient
from django.urls import reverse

from batches import lifecycle, progress, stream_limits, streams
from batches.models import ApiToken, Batch, ProgressEvent, Stage
from tests.conftest import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)

STAGES = [Stage.VALIDATING, Stage.EXTRACTING, Stage.ORGANIZING_QR, Stage.CREATING_SHEETS,
          Stage.PROCESSING_SHEETS, Stage.COLLECTING_RESULTS, Stage.GENERATING_CSV, Stage.LOADING_DATABASE,
          Stage.CLEANUP]


def parse_frames(raw: bytes) -> list[dict]:
    """SSE frames as dicts: {"comment": ...} or {"id", "event", "data"} with the data decoded from JSON."""
    frames = parse_sse(raw)
    for frame in frames:
        if "data" in frame:
            frame["data"] = json.loads(frame["data"])
    return frames


def events_of(frames: list[dict]) -> list[dict]:
    return [f for f in frames if "comment" not in f]


@pytest.fixture
def batch(owner):
    return Batch.objects.create(owner=owner, template="a4-20q-4", original_filename="scans.zip", size=10,
                                stage=Stage.UPLOADING)


@pytest.fixture
def auth_headers(owner):
    _row, token = ApiToken.objects.issue(owner)
    return {"Authorization": f"Bearer {token}"}


def publish_run(batch: Batch, sheets: int = 30) -> None:
    """Every stage of a batch as the pipeline would publish it, ending completed."""
    Batch.objects.filter(pk=batch.pk).update(sheets_total=sheets)
    for stage in STAGES:
        lifecycle.advance(batch, stage, f"start {stage}")
        if stage == Stage.PROCESSING_SHEETS:
            for done in (10, 20):
                Batch.objects.filter(pk=batch.pk).update(sheets_processed=done)
                lifecycle.advance(batch, stage, f"Processing: {done}/{sheets}", progress=100 * done / sheets)
        lifecycle.advance(batch, stage, f"end {stage}", progress=100)
    lifecycle.complete(batch, "done")


async def consume(path: str, headers: dict, *, timeout: float = 10.0, while_streaming=None,
                  stop_after_events: int | None = None) -> tuple[object, list[dict]]:
    """GET the stream and read it to its end (or ``stop_after_events`` events).
    ``while_streaming`` is an async callable run once the response has started."""
    client = AsyncClient()
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response
    raw = b""
    iterator = response.streaming_content.__aiter__()
    task = None
    try:
        first = await asyncio.wait_for(iterator.__anext__(), timeout)
        raw += first
        if while_streaming is not None:
            task = asyncio.ensure_future(while_streaming())
        while True:
            try:
                chunk = await asyncio.wait_for(iterator.__anext__(), timeout)
            except StopAsyncIteration:
                break
            raw += chunk
            if stop_after_events is not None and len(events_of(parse_frames(raw))) >= stop_after_events:
                break
    finally:
        if task is not None:
            await task
        await iterator.aclose()
    return response, parse_frames(raw)


def stream_url(batch) -> str:
    return reverse("batches:api-stream", args=[batch.pk])


def test_late_client_gets_every_event_and_the_stream_ends(batch, auth_headers):
    # S1. Given a batch that ran with nobody listening
    lifecycle.advance(batch, Stage.UPLOADING, "upload")
    publish_run(batch)
    stored = list(ProgressEvent.objects.filter(batch=batch).values_list("id", flat=True))

    # When a client connects afterwards
    response, frames = async_to_sync(consume)(stream_url(batch), auth_headers)

    # Then it gets every event, in order, in the format of docs/contracts.md, and the response ends
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    events = events_of(frames)
    assert [int(e["id"]) for e in events] == stored
    assert all(e["event"] == "progress" for e in events)
    assert events[-1]["data"]["stage"] == "completed"
    for e in events:
        data = e["data"]
        assert data["id"] == int(e["id"])
        assert data["batch_id"] == str(batch.pk)
        assert set(data) >= {"stage", "message", "progress_percentage", "overall_percentage", "sheets_total",
                             "sheets_processed", "sheets_failed", "elapsed_seconds", "timestamp"}
        assert data["message"]
    overall = [e["data"]["overall_percentage"] for e in events]
    assert overall == sorted(overall) and overall[-1] == 100.0


def test_reconnect_with_last_event_id_gets_exactly_the_missing_events(batch, auth_headers):
    # S2. Given a finished batch and a client that saw the first five events
    publish_run(batch)
    ids = list(ProgressEvent.objects.filter(batch=batch).values_list("id", flat=True))

    # When it reconnects with Last-Event-ID
    _response, frames = async_to_sync(consume)(stream_url(batch), {**auth_headers, "Last-Event-ID": str(ids[4])})

    # Then it gets exactly the rest, in order, no duplicates
    assert [int(e["id"]) for e in events_of(frames)] == ids[5:]


def test_reconnect_after_the_terminal_event_ends_at_once(batch, auth_headers):
    publish_run(batch)
    last = ProgressEvent.objects.filter(batch=batch).latest("id").id
    _response, frames = async_to_sync(consume)(stream_url(batch), {**auth_headers, "Last-Event-ID": str(last)})
    assert events_of(frames) == []


def test_live_events_arrive_while_connected(batch, auth_headers, settings):
    # Given a client connected before anything happened (the poll is slow, so
    # only the wake-ups can deliver in time)
    settings.OMR_STREAM_POLL = 30.0
    lifecycle.advance(batch, Stage.UPLOADING, "upload")

    async def run_batch():
        await asyncio.sleep(0.1)
        await sync_to_async(publish_run)(batch)

    # When the batch runs while it listens
    _response, frames = async_to_sync(consume)(stream_url(batch), auth_headers, while_streaming=run_batch,
                                               timeout=5.0)

    # Then it sees every event live and the stream ends after completed
    events = events_of(frames)
    assert [e["data"]["stage"] for e in events][0] == "uploading"
    assert events[-1]["data"]["stage"] == "completed"
    assert len(events) == ProgressEvent.objects.filter(batch=batch).count()


def test_client_converges_when_the_channel_layer_drops_messages(batch, auth_headers, settings, monkeypatch):
    # S3. Given a channel layer that loses every wake-up
    settings.OMR_STREAM_POLL = 0.2
    monkeypatch.setattr(progress, "wake", lambda *args, **kwargs: None)
    lifecycle.advance(batch, Stage.UPLOADING, "upload")

    async def run_batch():
        await asyncio.sleep(0.1)
        await sync_to_async(publish_run)(batch)

    # When the batch runs
    _response, frames = async_to_sync(consume)(stream_url(batch), auth_headers, while_streaming=run_batch)

    # Then the database poll still delivers every event, in order
    ids = list(ProgressEvent.objects.filter(batch=batch).values_list("id", flat=True))
    assert [int(e["id"]) for e in events_of(frames)] == ids


def test_idle_stream_sends_keep_alive_comments(batch, auth_headers, settings):
    # S4. Given a batch where nothing happens for a while
    assert settings.OMR_STREAM_KEEPALIVE <= 15
    settings.OMR_STREAM_KEEPALIVE = 0.2
    settings.OMR_STREAM_POLL = 0.1
    lifecycle.advance(batch, Stage.UPLOADING, "upload")

    async def finish_later():
        await asyncio.sleep(0.7)
        await sync_to_async(lifecycle.fail)(batch, "test")

    # When a client listens
    _response, frames = async_to_sync(consume)(stream_url(batch), auth_headers, while_streaming=finish_later)

    # Then keep-alive comments come while idle, no event is empty, and the stream ends on failed
    assert sum(f.get("comment") == "keep-alive" for f in frames) >= 2
    events = events_of(frames)
    assert [e["data"]["stage"] for e in events] == ["uploading", "failed"]
    assert all(e["data"]["message"] for e in events)


def test_follow_events_yields_rows_for_any_stream(batch):
    # The seam the browser page's stream uses: rows and keep-alive ticks.
    publish_run(batch)

    async def collect():
        return [e async for e in streams.follow_events(batch.pk, 0)]

    rows = async_to_sync(collect)()
    assert all(isinstance(r, ProgressEvent) for r in rows)
    assert rows[-1].stage == Stage.COMPLETED


def test_stream_of_another_users_batch_is_404(batch, colleague):
    _row, token = ApiToken.objects.issue(colleague)

    async def get():
        return await AsyncClient().get(stream_url(batch), headers={"Authorization": f"Bearer {token}"})

    assert async_to_sync(get)().status_code == 404


def test_stream_needs_login(batch):
    async def get():
        return await AsyncClient().get(stream_url(batch))

    assert async_to_sync(get)().status_code == 401


def test_many_listeners_of_one_batch_share_each_database_read(batch, monkeypatch):
    # Given a finished batch and a count of the database reads the streams make
    publish_run(batch)
    expected = list(ProgressEvent.objects.filter(batch=batch).order_by("id").values_list("id", flat=True))
    reads = []
    real = streams._events_after

    def counted(batch_id, last_id):
        reads.append(last_id)
        return real(batch_id, last_id)

    monkeypatch.setattr(streams, "_events_after", counted)

    async def listen():
        return [e.id async for e in streams.follow_events(batch.pk, 0) if e is not None]

    async def fifty_at_once():
        return await asyncio.gather(*(listen() for _ in range(50)))

    # When fifty listeners connect at the same moment
    got = async_to_sync(fifty_at_once)()

    # Then each got every event, in order, once, from far fewer reads than listeners
    assert all(ids == expected for ids in got)
    assert 1 <= len(reads) <= 5, reads


def test_a_listener_that_goes_away_does_not_cancel_the_shared_read(batch):
    publish_run(batch)
    expected = list(ProgressEvent.objects.filter(batch=batch).order_by("id").values_list("id", flat=True))

    async def scenario():
        watch = streams._watch(batch.pk, 5.0)
        try:
            gone = asyncio.ensure_future(watch.read(0, watch.generation))
            stays = asyncio.ensure_future(watch.read(0, watch.generation))
            await asyncio.sleep(0)
            gone.cancel()
            events, stage = await stays
        finally:
            await streams._leave(watch, asyncio.Event())
        return [e.id for e in events], stage, gone.cancelled()

    ids, stage, cancelled = async_to_sync(scenario)()
    assert cancelled and ids == expected and stage == Stage.COMPLETED


# ---------------------------------------------------------------- errors, lifetime, the per-user cap


def test_a_failing_database_read_does_not_stop_the_stream(batch, auth_headers, settings, monkeypatch):
    # Given a database that refuses the stream's second and third reads (a
    # restart, or "too many clients"), and a batch that runs meanwhile
    from django.db import OperationalError

    settings.OMR_STREAM_POLL = 0.2
    lifecycle.advance(batch, Stage.UPLOADING, "upload")
    real = streams._events_after
    calls = []

    def flaky(batch_id, last_id):
        calls.append(last_id)
        if len(calls) in (2, 3):
            raise OperationalError("sorry, too many clients already")
        return real(batch_id, last_id)

    monkeypatch.setattr(streams, "_events_after", flaky)

    async def run_batch():
        await asyncio.sleep(0.1)
        await sync_to_async(publish_run)(batch)

    # When a client follows it
    _response, frames = async_to_sync(consume)(stream_url(batch), auth_headers, while_streaming=run_batch)

    # Then the stream read again and delivered every event, in order, once,
    # and ended after the terminal event (before the fix the error ended the
    # response body with an exception, which Daphne left open)
    ids = list(ProgressEvent.objects.filter(batch=batch).values_list("id", flat=True))
    assert len(calls) > 3
    assert [int(e["id"]) for e in events_of(frames)] == ids


def test_an_error_in_a_stream_ends_its_response_with_a_retry(batch, owner, monkeypatch):
    # Given a page stream whose batch fails, and a database gone when the page
    # stream reads the final counts
    lifecycle.advance(batch, Stage.UPLOADING, "upload")
    from batches.web import views

    def broken(_batch):
        raise RuntimeError("database gone")

    monkeypatch.setattr(views, "_refresh", broken)

    async def fail_later():
        await asyncio.sleep(0.2)
        await sync_to_async(lifecycle.fail)(batch, "test")

    async def read():
        client = AsyncClient()
        await client.aforce_login(owner)
        response = await client.get(reverse("batches:progress-stream", args=[batch.pk]))
        raw = b""
        task = None
        async for chunk in response.streaming_content:
            raw += chunk
            if task is None:
                task = asyncio.ensure_future(fail_later())
        await task
        return raw

    # When the page stream follows it
    raw = async_to_sync(read)()

    # Then the response ends (no exception out of the body) with a comment and
    # a retry, so the browser reconnects and gets the current state
    assert raw.endswith(streams.ERROR_FRAME)
    assert b"retry: " in raw


def test_a_stream_ends_after_its_lifetime_and_resumes_with_last_event_id(batch, auth_headers, settings):
    # Given streams that live half a second, and a batch that takes longer
    settings.OMR_STREAM_MAX_SECONDS = 0.5
    settings.OMR_STREAM_POLL = 30.0
    lifecycle.advance(batch, Stage.UPLOADING, "upload")

    def slow_run():
        Batch.objects.filter(pk=batch.pk).update(sheets_total=30)
        for done in range(1, 31):
            Batch.objects.filter(pk=batch.pk).update(sheets_processed=done)
            lifecycle.advance(batch, Stage.PROCESSING_SHEETS, f"Processing: {done}/30", progress=100 * done / 30)
            time.sleep(0.07)
        lifecycle.advance(batch, Stage.CLEANUP, "cleanup", progress=100)
        lifecycle.complete(batch, "done")

    async def follow_with_reconnects():
        runner = asyncio.ensure_future(sync_to_async(slow_run, thread_sensitive=False)())
        got, ends, last = [], [], None
        try:
            while True:
                headers = {**auth_headers, **({"Last-Event-ID": str(last)} if last else {})}
                _response, frames = await consume(stream_url(batch), headers)
                got += [int(e["id"]) for e in events_of(frames)]
                last = got[-1] if got else last
                ends.append(frames[-1])
                if got and events_of(frames) and events_of(frames)[-1]["data"]["stage"] == "completed":
                    return got, ends
                assert len(ends) < 50, "the stream never finished"
        finally:
            await runner

    # When a client follows it, reconnecting with Last-Event-ID each time the server ends the stream
    got, ends = async_to_sync(follow_with_reconnects)()

    # Then the server ended it several times with a retry, and the client got
    # every event, in order, once
    ids = list(ProgressEvent.objects.filter(batch=batch).values_list("id", flat=True))
    assert got == ids
    assert len(ends) >= 3
    assert all(end.get("retry") == str(streams.RECONNECT_MS) for end in ends[:-1]), ends


def test_the_page_stream_resumes_from_the_state_the_page_has(batch, owner, settings):
    # Given a running batch and a page that already shows its latest state
    settings.OMR_STREAM_MAX_SECONDS = 0.3
    lifecycle.advance(batch, Stage.UPLOADING, "upload")
    shown = lifecycle.advance(batch, Stage.EXTRACTING, "Extracting", progress=50)

    async def read(headers):
        client = AsyncClient()
        await client.aforce_login(owner)
        response = await client.get(reverse("batches:progress-stream", args=[batch.pk]), headers=headers)
        assert response.status_code == 200

        async def body():
            return b"".join([chunk async for chunk in response.streaming_content])

        return parse_sse(await asyncio.wait_for(body(), 10))  # a stream that never ends fails here

    # When its stream reaches its lifetime, and the browser reconnects with Last-Event-ID
    resumed = async_to_sync(read)({"Last-Event-ID": str(shown.id)})
    # Then no state is sent again, and the stream ends with a retry, not "done"
    assert [f for f in resumed if "event" in f] == []
    assert resumed[-1].get("retry") == str(streams.RECONNECT_MS)

    # And a page that is behind gets one frame of the current state, not the log
    behind = async_to_sync(read)({"Last-Event-ID": "1"})
    frames = [f for f in behind if "event" in f]
    assert [(f["event"], f["id"]) for f in frames] == [("progress", str(shown.id))]

    # And once the batch has finished, a page that has the last state gets only "done"
    final = lifecycle.fail(batch, "test")
    done = async_to_sync(read)({"Last-Event-ID": str(final.id)})
    assert [(f["event"], f["data"]) for f in done if "event" in f] == [("done", "failed")]


def test_a_read_started_before_a_wake_up_is_not_shared_with_the_woken(batch, monkeypatch):
    # Given a read in flight, and an event committed (and its wake-up
    # received) while that read runs
    started, release = [], None
    real = streams._events_after

    def slow(batch_id, last_id):
        started.append(last_id)
        release.wait(5)
        return real(batch_id, last_id)

    monkeypatch.setattr(streams, "_events_after", slow)

    async def scenario():
        nonlocal release
        import threading

        release = threading.Event()
        watch = streams._watch(batch.pk, 30.0)
        try:
            early = asyncio.ensure_future(watch.read(0, watch.generation))
            await asyncio.sleep(0.05)
            watch.wake()
            woken_at = watch.generation
            same = asyncio.ensure_future(watch.read(0, woken_at - 1))  # woken before: may share
            late = asyncio.ensure_future(watch.read(0, woken_at))  # woken after the read began
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(early, same, late)
            return early.result() is same.result(), early.result() is late.result()
        finally:
            await streams._leave(watch, asyncio.Event())

    # When listeners ask for the same rows
    shared, shared_late = async_to_sync(scenario)()

    # Then the one woken after the read began gets a read of its own
    assert shared and not shared_late
    assert len(started) == 2


def test_streams_over_the_per_user_cap_are_refused_with_429(batch, owner, colleague, auth_headers, settings):
    # Given a cap of two streams per user, and a batch that runs for a while
    settings.OMR_MAX_STREAMS_PER_USER = 2
    lifecycle.advance(batch, Stage.UPLOADING, "upload")
    _row, other_token = ApiToken.objects.issue(colleague)
    other_batch = Batch.objects.create(owner=colleague, template="a4-20q-4", original_filename="b.zip", size=1,
                                       stage=Stage.UPLOADING)

    async def hold(response):
        # A client reading its stream until it goes away (cancelled)
        async for _chunk in response.streaming_content:
            pass

    async def opened(client, url, headers=None):
        response = await client.get(url, headers=headers or {})
        if response.status_code != 200:
            return response, None
        task = asyncio.ensure_future(hold(response))
        await asyncio.sleep(0.05)
        return response, task

    async def leave(task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def scenario():
        client = AsyncClient()
        _first, first_task = await opened(client, stream_url(batch), auth_headers)
        _second, second_task = await opened(client, stream_url(batch), auth_headers)
        third, _ = await opened(client, stream_url(batch), auth_headers)
        page = AsyncClient()
        await page.aforce_login(owner)
        page_third, _ = await opened(page, reverse("batches:progress-stream", args=[batch.pk]))
        others, others_task = await opened(client, stream_url(other_batch), {"Authorization": f"Bearer {other_token}"})
        # One stream's client goes away: its slot is free again
        await leave(second_task)
        again, again_task = await opened(client, stream_url(batch), auth_headers)
        for task in (first_task, others_task, again_task):
            await leave(task)
        return third, page_third, others.status_code, again.status_code

    # When the user opens a third stream (API and page), another user one, and then one after closing one
    third, page_third, others, again = async_to_sync(scenario)()

    # Then the third is refused with a 429 that names the limit and the setting
    assert third.status_code == 429
    body = json.loads(third.content)
    assert body["limit"] == 2 and "OMR_MAX_STREAMS_PER_USER" in body["error"] and "at most 2" in body["error"]
    assert third["Retry-After"]
    assert page_third.status_code == 429 and b"OMR_MAX_STREAMS_PER_USER" in page_third.content
    # And the cap is per user, and a closed stream gives its slot back
    assert others == 200 and again == 200
    assert stream_limits._local.count(owner.pk) == 0


def test_stream_slots_in_redis_are_shared_by_web_processes_and_expire(owner, monkeypatch):
    # Given two web processes' views of the slots in one Redis (a namespace of this test's own)
    import uuid

    import redis

    from tests.test_end_to_end import redis_url

    prefix = f"omr-test-{uuid.uuid4().hex[:8]}-streams"
    one = stream_limits.RedisSlots(redis_url(), prefix)
    two = stream_limits.RedisSlots(redis_url(), prefix)
    monkeypatch.setattr(stream_limits, "LEASE_SECONDS", 1.0)

    async def scenario():
        taken = [await one.take(owner.pk, "a", 2), await two.take(owner.pk, "b", 2), await two.take(owner.pk, "c", 2)]
        await one.give_back(owner.pk, "a")
        after_give_back = await two.take(owner.pk, "d", 2)
        full = await one.take(owner.pk, "e", 2)
        await asyncio.sleep(1.2)  # "b" and "d" were never renewed: a process that died
        await two.renew(owner.pk, "ghost")  # renewing a slot that is gone does not take one
        after_expiry = [await one.take(owner.pk, "f", 2), await one.take(owner.pk, "g", 2)]
        return taken, after_give_back, full, after_expiry

    try:
        taken, after_give_back, full, after_expiry = async_to_sync(scenario)()
    finally:
        client = redis.Redis.from_url(redis_url())
        ttl = client.ttl(f"{prefix}:{owner.pk}")
        client.delete(f"{prefix}:{owner.pk}")
        client.close()

    # Then the cap holds across both, a slot given back or expired is free again,
    # and the set itself expires
    assert taken == [True, True, False]
    assert after_give_back is True and full is False
    assert after_expiry == [True, True]
    assert 0 < ttl <= 2


# ---------------------------------------------------------------- many streams on a real Daphne


@contextlib.contextmanager
def daphne_on_test_database(tmp_path, settings, **env):
    """Daphne on a free port, serving this test's database, with the Redis
    channel layer (a key namespace of its own) that this process also wakes.
    Its database connections are named ``omr-stream-test`` (PostgreSQL's
    ``application_name``). Yields (port, process)."""
    import os
    import signal
    import subprocess
    import sys
    import uuid
    from urllib.parse import urlparse

    import redis
    from django.db import connection

    from tests.test_end_to_end import ROOT, free_port, redis_url

    if connection.vendor == "postgresql":
        db_url = urlparse(os.environ["DATABASE_URL"])._replace(path=f"/{connection.settings_dict['NAME']}").geturl()
    else:
        db_url = f"sqlite:///{connection.settings_dict['NAME']}"
    namespace = f"omr-stream-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    process_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OMR_", "DJANGO_", "PYTEST"))},
        "DATABASE_URL": db_url, "REDIS_URL": redis_url(), "OMR_REDIS_NAMESPACE": namespace,
        "OMR_CHANNEL_LAYER": "redis", "OMR_BROKER": "redis", "MEDIA_ROOT": str(tmp_path / "media"),
        "OMR_VAR_DIR": str(tmp_path), "SECRET_KEY": "stream-test-secret-key-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1", "PGAPPNAME": "omr-stream-test", "PYTHONUNBUFFERED": "1", **env,
    }
    # This process wakes the same channel-layer group as Daphne listens on.
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [redis_url()], "prefix": f"{namespace}-asgi", "capacity": 1000, "expiry": 30}}}
    log = tmp_path / "daphne.log"
    with log.open("ab") as out:
        web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                "omrsite.asgi:application"], cwd=ROOT, env=process_env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert web.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield port, web
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait(10)
        client = redis.Redis.from_url(redis_url())
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()
        print(log.read_text(errors="replace")[-6000:])


def database_connections_of(process) -> int:
    """Open database connections of ``process``: PostgreSQL sessions named
    ``omr-stream-test``, or SQLite: descriptors open on the database file."""
    import os

    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'omr-stream-test'")
            return cursor.fetchone()[0]
    name = os.path.realpath(connection.settings_dict["NAME"])
    fds = f"/proc/{process.pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            count += os.readlink(f"{fds}/{fd}") == name
    return count


@pytest.mark.slow
def test_300_streams_on_one_daphne_get_every_event_holding_few_database_connections(batch, auth_headers, tmp_path,
                                                                                    settings):
    # Given one Daphne whose database pool (PostgreSQL) is 5 connections, and
    # 300 clients on one batch (more than PostgreSQL's 100 connections)
    from django.db import connections

    from tests.sse_client import read_stream

    clients = 300
    lifecycle.advance(batch, Stage.UPLOADING, "upload")

    def run_batch():
        try:
            publish_run(batch)
        finally:
            connections.close_all()

    with daphne_on_test_database(tmp_path, settings, OMR_DB_POOL_SIZE="5",
                                 OMR_MAX_STREAMS_PER_USER=str(clients)) as (port, web):
        async def scenario():
            waiting = 0
            all_waiting = asyncio.Event()

            def counter():
                seen = False

                def on_event(_event):
                    nonlocal seen, waiting
                    if not seen:
                        seen = True
                        waiting += 1
                        if waiting == clients:
                            all_waiting.set()
                return on_event

            path = f"/api/batches/{batch.pk}/stream"
            reads = [asyncio.ensure_future(read_stream(port, path, auth_headers, on_event=counter()))
                     for _ in range(clients)]
            try:
                await asyncio.wait_for(all_waiting.wait(), 40)
            except TimeoutError:
                done = [r.result() for r in reads if r.done() and not r.exception()]
                raise AssertionError(f"{waiting} of {clients} streams started; statuses "
                                     f"{sorted({d.status for d in done})}") from None
            # When every stream has its first event and waits
            await asyncio.sleep(1.0)
            held = await sync_to_async(database_connections_of, thread_sensitive=False)(web)
            # and the batch runs
            await sync_to_async(run_batch, thread_sensitive=False)()
            results = await asyncio.wait_for(asyncio.gather(*reads), 40)
            return held, results

        held, results = async_to_sync(scenario)()

    # Then the waiting streams held at most the pool's connections, and every
    # client got every event, in order, once, and its stream ended
    expected = list(ProgressEvent.objects.filter(batch=batch).order_by("id").values_list("id", flat=True))
    assert held <= 5, held
    assert all(r.status == 200 for r in results)
    complete = sum([e["id"] for e in r.events] == expected for r in results)
    assert complete == clients, f"{complete}/{clients} clients got every event"
