"""Following a batch's progress events, for the SSE API and the browser page.

``follow_events`` is the one loop both streams share. The listeners of one
batch in one web process share a *watch*: one channel-layer subscription (the
wake-ups) and one slow poll of the database (in case a wake-up was lost). When
the watch is woken, the listeners read the new rows; listeners that need the
same rows share one read. A read takes a database connection for one query
and gives it back at once, so a stream that waits holds none.

``follow_events`` yields ``ProgressEvent`` rows, ``None`` as a keep-alive tick
when nothing happened for a while, and ``EXPIRED`` when the stream has lived
its time (the client then reconnects with ``Last-Event-ID``). It ends after
the batch's terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
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
#: Yielded by ``follow_events`` when the stream's lifetime is over.
EXPIRED = object()
#: What a client waits before it reconnects after the server ended a stream
#: that was not finished (the SSE ``retry:`` field, milliseconds).
RECONNECT_MS = 1000


def release_connection() -> None:
    """Give this thread's database connection back (to the pool, or closed).
    A stream lives for minutes and must not keep the one its request opened."""
    if not connection.in_atomic_block:
        connection.close()


def _events_after(batch_id, last_id: int) -> tuple[list[ProgressEvent], str | None]:
    # The stage first: a terminal stage is committed with its terminal event,
    # so when the stage read here is terminal, that event is in the rows below.
    try:
        stage = Batch.objects.filter(pk=batch_id).values_list("stage", flat=True).first()
        events = list(ProgressEvent.objects.filter(batch_id=batch_id, id__gt=last_id).order_by("id")[:REPLAY_LIMIT])
    finally:
        release_connection()
    return events, stage


class _BatchWatch:
    """What the listeners of one batch share in one event loop: the
    subscription to the batch's wake-ups, the poll, and the reads in flight.

    ``generation`` counts the wake-ups (and poll ticks). A listener woken at
    generation G may share a read only if that read started at G or later: a
    read that started before the wake-up may have missed the rows it announces.
    """

    def __init__(self, batch_id, poll: float):
        self.batch_id = batch_id
        self.poll = poll
        self.loop = asyncio.get_running_loop()
        self.listeners: set[asyncio.Event] = set()
        self.generation = 0
        self.reads: dict[int, tuple[int, asyncio.Future]] = {}
        self.subscribed = self.loop.create_future()
        self.tasks = [asyncio.ensure_future(self._listen()), asyncio.ensure_future(self._tick())]

    def wake(self) -> None:
        self.generation += 1
        for woken in self.listeners:
            woken.set()

    async def read(self, last_id: int, generation: int) -> tuple[list[ProgressEvent], str | None]:
        """The events after ``last_id``, from a read that started at ``generation`` or later."""
        started, future = self.reads.get(last_id, (-1, None))
        if future is None or started < generation:
            future = asyncio.ensure_future(sync_to_async(_events_after)(self.batch_id, last_id))
            self.reads[last_id] = (self.generation, future)

            def forget(done: asyncio.Future, last_id=last_id) -> None:
                if self.reads.get(last_id, (0, None))[1] is done:
                    del self.reads[last_id]
                if not done.cancelled():
                    done.exception()  # retrieved: a failed read is reported by the listeners

            future.add_done_callback(forget)
        # Shielded: a listener that goes away must not cancel the others' read.
        return await asyncio.shield(future)

    async def _listen(self) -> None:
        layer = get_channel_layer()
        channel = None
        try:
            if layer is not None:
                # Subscribed before any listener reads the database: an event
                # published in between is then either in the rows read or
                # behind a wake-up.
                channel = await layer.new_channel()
                await layer.group_add(group_name(self.batch_id), channel)
        except Exception as exc:  # no channel layer: the poll alone still converges
            logger.warning("Streams of batch=%s without live wake-ups: %s", self.batch_id, exc)
            channel = None
        finally:
            if not self.subscribed.done():
                self.subscribed.set_result(None)
        if channel is None:
            return
        try:
            while True:
                try:
                    await layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("Channel layer receive failed (%s); relying on the database poll", exc)
                    await asyncio.sleep(1.0)
                    continue
                self.wake()
        finally:
            with contextlib.suppress(Exception):
                await layer.group_discard(group_name(self.batch_id), channel)

    async def _tick(self) -> None:
        # One poll for all the listeners, so that they share its reads too.
        while True:
            await asyncio.sleep(self.poll)
            self.wake()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        # The receiver leaves the group on its way out; never wait long for Redis.
        await asyncio.wait(self.tasks, timeout=2.0)


_watches: dict[tuple[int, str], _BatchWatch] = {}


def _watch(batch_id, poll: float) -> _BatchWatch:
    loop = asyncio.get_running_loop()
    key = (id(loop), str(batch_id))
    watch = _watches.get(key)
    if watch is None or watch.loop is not loop:
        watch = _watches[key] = _BatchWatch(batch_id, poll)
    return watch


async def _leave(watch: _BatchWatch, woken: asyncio.Event) -> None:
    watch.listeners.discard(woken)
    if watch.listeners:
        return
    key = (id(watch.loop), str(watch.batch_id))
    if _watches.get(key) is watch:
        del _watches[key]
    await watch.close()


def stream_lifetime() -> float | None:
    """Seconds a new stream may live (``OMR_STREAM_MAX_SECONDS``, 0: no limit),
    less up to a tenth at random, so that streams opened together do not all
    reconnect at the same moment."""
    lifetime = settings.OMR_STREAM_MAX_SECONDS
    return lifetime * (1 - 0.1 * random.random()) if lifetime > 0 else None


async def follow_event_reads(batch: Batch | str, last_event_id: int = 0, *, keepalive: float | None = None,
                             poll: float | None = None, lifetime: float | None = None,
                             ) -> AsyncIterator[list[ProgressEvent] | None | object]:
    """``follow_events``, with one list of events per database read instead of
    one event at a time: a listener that fell behind sends what it missed in
    one write (with a thousand listeners, the writes are what costs). ``None``
    and ``EXPIRED`` as ``follow_events`` yields them.
    """
    batch_id = batch.pk if isinstance(batch, Batch) else batch
    keepalive = min(keepalive or settings.OMR_STREAM_KEEPALIVE, 15.0)
    watch = _watch(batch_id, poll or settings.OMR_STREAM_POLL)
    woken = asyncio.Event()
    watch.listeners.add(woken)
    ends_at = time.monotonic() + lifetime if lifetime else float("inf")
    last_id = last_event_id
    last_sent = time.monotonic()
    retry_at = None
    failures = 0
    must_read = True
    try:
        await asyncio.shield(watch.subscribed)
        while True:
            if must_read:
                generation = watch.generation
                woken.clear()
                try:
                    events, stage = await watch.read(last_id, generation)
                except Exception as exc:
                    failures += 1
                    retry_at = time.monotonic() + min(5.0, 0.25 * 2 ** failures)
                    logger.warning("Stream of batch=%s could not read its events (%d in a row): %s",
                                   batch_id, failures, exc)
                else:
                    failures, retry_at = 0, None
                    if events:
                        last_id = events[-1].id
                        last_sent = time.monotonic()
                        yield events
                    if len(events) == REPLAY_LIMIT:
                        continue  # more to replay
                    if stage is None:
                        return  # the batch was deleted
                    if stage in TERMINAL_STAGES and (not events or events[-1].is_terminal):
                        # Finished and everything sent. (A retried batch is no longer in
                        # a terminal stage, so its stream goes on past the old end.)
                        return
            now = time.monotonic()
            if now >= ends_at:
                yield EXPIRED
                return
            # Wait for a wake-up (or the watch's poll), the keep-alive, a retry
            # or the end of the lifetime, whichever comes first.
            until = min(last_sent + keepalive, ends_at, retry_at or float("inf"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=max(0.0, until - now))
            now = time.monotonic()
            must_read = woken.is_set() or (retry_at is not None and now >= retry_at)
            if now - last_sent >= keepalive:
                last_sent = now
                yield None
    finally:
        await _leave(watch, woken)


async def follow_events(batch: Batch | str, last_event_id: int = 0, *, keepalive: float | None = None,
                        poll: float | None = None, lifetime: float | None = None,
                        ) -> AsyncIterator[ProgressEvent | None | object]:
    """Yield the events of ``batch`` after ``last_event_id``, then new ones as
    they are published, until the batch's terminal event.

    Yields ``None`` when ``keepalive`` seconds (default ``OMR_STREAM_KEEPALIVE``,
    at most 15) pass without an event, so the caller can send a keep-alive, and
    ``EXPIRED`` (then ends) once ``lifetime`` seconds have passed. ``poll``
    (default ``OMR_STREAM_POLL``) is how often the database is read when no
    wake-up comes (the first listener of the batch sets it). A batch that is
    deleted ends the stream. A failed read is retried (with keep-alives
    meanwhile), never raised: a stream outlives a database restart.
    """
    async with contextlib.aclosing(follow_event_reads(batch, last_event_id, keepalive=keepalive, poll=poll,
                                                      lifetime=lifetime)) as reads:
        async for item in reads:
            if isinstance(item, list):
                for event in item:
                    yield event
            else:
                yield item


def sse_frame(event: ProgressEvent) -> bytes:
    """One Server-Sent Event as docs/contracts.md spells it. Kept on the row: the
    listeners of a batch share the rows of a read, and a thousand of them
    would otherwise encode the same event a thousand times."""
    frame = getattr(event, "_sse_frame", None)
    if frame is None:
        data = json.dumps(event.to_dict(), separators=(",", ":"))
        frame = event._sse_frame = f"id: {event.id}\nevent: progress\ndata: {data}\n\n".encode()
    return frame


KEEPALIVE_FRAME = b": keep-alive\n\n"
#: The last frame of a stream that lived its time: the client reconnects
#: (``retry:``) with the ``Last-Event-ID`` it has and misses nothing.
EXPIRED_FRAME = f": this stream has lived its time; reconnect with Last-Event-ID\nretry: {RECONNECT_MS}\n\n".encode()
#: The last frame of a stream stopped by an error of the server.
ERROR_FRAME = f": this stream stopped on a server error; reconnect with Last-Event-ID\nretry: {RECONNECT_MS}\n\n".encode()


def last_event_id(request) -> int:
    """Where a client resumes: the ``Last-Event-ID`` header (what a browser's
    EventSource sends when it reconnects), else ``?last_event_id=``, else 0."""
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or "0"
    try:
        return max(0, int(raw.strip()))
    except ValueError:
        return 0


async def sse_stream(batch_id, last_event_id: int) -> AsyncIterator[bytes]:
    """The bytes of the API's SSE response: a comment first (so the client sees
    the response start at once), then events and keep-alive comments."""
    yield f": progress of batch {batch_id}\n\n".encode()
    async with contextlib.aclosing(follow_event_reads(batch_id, last_event_id, lifetime=stream_lifetime())) as reads:
        async for item in reads:
            if item is EXPIRED:
                yield EXPIRED_FRAME
            elif item is None:
                yield KEEPALIVE_FRAME
            else:
                yield b"".join(sse_frame(event) for event in item)


async def serve(frames: AsyncIterator[bytes], slot=None) -> AsyncIterator[bytes]:
    """A stream's response body: ``frames``, without the database connection
    its request opened, holding ``slot`` (``stream_limits``) while it runs.

    An error ends the response with a last frame instead of raising: once the
    response has started, an exception out of the body left it open for good
    (Daphne then tries to start a 500 response, fails, and stops reaping its
    finished requests)."""
    async with contextlib.aclosing(frames):
        try:
            await sync_to_async(release_connection)()
            async for frame in frames:
                yield frame
                if slot is not None:
                    await slot.keep()
        except Exception:
            logger.exception("A stream stopped on an error; the client will reconnect")
            yield ERROR_FRAME
        finally:
            if slot is not None:
                await slot.release()
