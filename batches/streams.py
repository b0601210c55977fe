"""Following a batch's progress events, for the SSE API and the browser page.

``follow_events`` is the one loop both streams share: subscribe to the batch's
channel-layer group first, then replay the event rows after ``last_event_id``
from the database, then wait for wake-ups (or a slow poll, in case a wake-up
was lost) and read the new rows. It yields ``ProgressEvent`` rows, and
``None`` as a keep-alive tick when nothing happened for a while; it ends after
the batch's terminal event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from .models import TERMINAL_STAGES, Batch, ProgressEvent
from .progress import group_name

logger = logging.getLogger(__name__)

REPLAY_LIMIT = 500  # rows per database read


def _events_after(batch_id, last_id: int) -> tuple[list[ProgressEvent], str | None]:
    # The stage first: a terminal stage is committed with its terminal event,
    # so when the stage read here is terminal, that event is in the rows below.
    try:
        stage = Batch.objects.filter(pk=batch_id).values_list("stage", flat=True).first()
        events = list(ProgressEvent.objects.filter(batch_id=batch_id, id__gt=last_id).order_by("id")[:REPLAY_LIMIT])
    finally:
        # A stream lives for minutes: do not hold a database connection (one
        # per listener) between reads.
        if not connection.in_atomic_block:
            connection.close()
    return events, stage


_inflight: dict[tuple[str, int], asyncio.Future] = {}


async def _read_shared(batch_id, last_id: int) -> tuple[list[ProgressEvent], str | None]:
    """``_events_after``, read once for every stream of this process that asks
    for the same rows at the same time. A wake-up reaches all the listeners of
    a batch at once, and each used to read the same rows: with 200 listeners
    that was 200 reads (and connections) in a row on Django's one database
    thread, and the last listener got its event a second late. Nothing is
    cached: a request that comes after a read has finished reads again."""
    key = (str(batch_id), last_id)
    loop = asyncio.get_running_loop()
    future = _inflight.get(key)
    if future is None or future.get_loop() is not loop:
        future = asyncio.ensure_future(sync_to_async(_events_after)(batch_id, last_id))
        _inflight[key] = future

        def forget(done: asyncio.Future, key=key) -> None:
            if _inflight.get(key) is done:
                del _inflight[key]

        future.add_done_callback(forget)
    # Shielded: a listener that goes away must not cancel the others' read.
    return await asyncio.shield(future)


async def follow_events(batch: Batch | str, last_event_id: int = 0, *, keepalive: float | None = None,
                        poll: float | None = None) -> AsyncIterator[ProgressEvent | None]:
    """Yield the events of ``batch`` after ``last_event_id``, then new ones as
    they are published, until the batch's terminal event.

    Yields ``None`` when ``keepalive`` seconds (default ``OMR_STREAM_KEEPALIVE``,
    at most 15) pass without an event, so the caller can send a keep-alive.
    ``poll`` (default ``OMR_STREAM_POLL``) is how often the database is read
    when no wake-up comes. A batch that is deleted ends the stream.
    """
    batch_id = batch.pk if isinstance(batch, Batch) else batch
    keepalive = min(keepalive or settings.OMR_STREAM_KEEPALIVE, 15.0)
    poll = poll or settings.OMR_STREAM_POLL
    layer = get_channel_layer()
    woken = asyncio.Event()
    channel = receiver = None
    if layer is not None:
        try:
            # Subscribe before reading the database: an event published in
            # between is then either in the rows read or behind a wake-up.
            channel = await layer.new_channel()
            await layer.group_add(group_name(batch_id), channel)
            receiver = asyncio.ensure_future(_receive(layer, channel, woken))
        except Exception as exc:  # no channel layer: the poll alone still converges
            logger.warning("Stream for batch=%s without live wake-ups: %s", batch_id, exc)
            channel = None
    last_id = last_event_id
    last_sent = time.monotonic()
    try:
        while True:
            woken.clear()
            events, stage = await _read_shared(batch_id, last_id)
            for event in events:
                last_id = event.id
                last_sent = time.monotonic()
                yield event
            if len(events) == REPLAY_LIMIT:
                continue  # more to replay
            if stage is None:
                return  # the batch was deleted
            if stage in TERMINAL_STAGES and (not events or events[-1].is_terminal):
                # Finished and everything sent. (A retried batch is no longer in
                # a terminal stage, so its stream goes on past the old end.)
                return
            # Wait for a wake-up, the poll or the keep-alive, whichever comes first.
            wait = min(poll, max(0.05, keepalive - (time.monotonic() - last_sent)))
            try:
                await asyncio.wait_for(woken.wait(), timeout=wait)
            except TimeoutError:
                pass
            if not woken.is_set() and time.monotonic() - last_sent >= keepalive:
                last_sent = time.monotonic()
                yield None
    finally:
        if receiver is not None:
            receiver.cancel()
        if channel is not None:
            try:
                await layer.group_discard(group_name(batch_id), channel)
            except Exception:  # the client is gone anyway
                pass


async def _receive(layer, channel: str, woken: asyncio.Event) -> None:
    # One long-lived receiver per stream: cancelling a receive on every loop
    # would churn the channel layer.
    while True:
        try:
            await layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("Channel layer receive failed (%s); relying on the database poll", exc)
            await asyncio.sleep(1.0)
            continue
        woken.set()


def sse_frame(event: ProgressEvent) -> bytes:
    """One Server-Sent Event as docs/contracts.md spells it."""
    data = json.dumps(event.to_dict(), separators=(",", ":"))
    return f"id: {event.id}\nevent: progress\ndata: {data}\n\n".encode()


KEEPALIVE_FRAME = b": keep-alive\n\n"


async def sse_stream(batch_id, last_event_id: int) -> AsyncIterator[bytes]:
    """The bytes of the API's SSE response: a comment first (so the client sees
    the response start at once), then events and keep-alive comments."""
    yield f": progress of batch {batch_id}\n\n".encode()
    async for event in follow_events(batch_id, last_event_id):
        yield KEEPALIVE_FRAME if event is None else sse_frame(event)
