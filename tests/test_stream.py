"""The progress stream (RELIABILITY S1-S4): the real SSE response of the async
view, consumed through Django's AsyncClient and parsed frame by frame."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient
from django.urls import reverse

from batches import progress, streams
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
        progress.publish(batch, stage, f"start {stage}")
        if stage == Stage.PROCESSING_SHEETS:
            for done in (10, 20):
                Batch.objects.filter(pk=batch.pk).update(sheets_processed=done)
                progress.publish(batch, stage, f"Processing: {done}/{sheets}", progress=100 * done / sheets)
        progress.publish(batch, stage, f"end {stage}", progress=100)
    progress.publish(batch, Stage.COMPLETED, "done", progress=100)


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
    progress.publish(batch, Stage.UPLOADING, "upload")
    publish_run(batch)
    stored = list(ProgressEvent.objects.filter(batch=batch).values_list("id", flat=True))

    # When a client connects afterwards
    response, frames = async_to_sync(consume)(stream_url(batch), auth_headers)

    # Then it gets every event, in order, in DESIGN's format, and the response ends
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
    progress.publish(batch, Stage.UPLOADING, "upload")

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
    progress.publish(batch, Stage.UPLOADING, "upload")

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
    progress.publish(batch, Stage.UPLOADING, "upload")

    async def finish_later():
        await asyncio.sleep(0.7)
        await sync_to_async(progress.publish)(batch, Stage.FAILED, "Batch failed: test", error="test")

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
