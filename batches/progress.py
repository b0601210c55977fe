"""Recording and announcing progress events.

``record()`` writes a ``ProgressEvent`` row (the source of truth, replayed by
streams) and, once the transaction commits, wakes the channel-layer group
``batch-<id>`` so live streams read the new rows at once. The wake-up carries
no data: the channel layer is at-most-once, so a lost wake-up only delays a
stream until its next database poll. The moves between stages that the
events report are in ``lifecycle.py``, the one caller of ``record``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Batch, ProgressEvent, Stage

logger = logging.getLogger(__name__)

#: Share of the whole batch (start, end, in percent) each stage stands for.
#: Reading the sheets is most of the work.
STAGE_SPAN: dict[str, tuple[float, float]] = {
    Stage.QUEUED: (0.0, 0.0),
    Stage.UPLOADING: (0.0, 5.0),
    Stage.VALIDATING: (5.0, 7.0),
    Stage.EXTRACTING: (7.0, 15.0),
    Stage.ORGANIZING_QR: (15.0, 17.0),
    Stage.CREATING_SHEETS: (17.0, 20.0),
    Stage.PROCESSING_SHEETS: (20.0, 90.0),
    Stage.COLLECTING_RESULTS: (90.0, 93.0),
    Stage.GENERATING_CSV: (93.0, 96.0),
    Stage.LOADING_DATABASE: (96.0, 98.0),
    Stage.CLEANUP: (98.0, 99.5),
    Stage.COMPLETED: (100.0, 100.0),
}


def group_name(batch_id) -> str:
    """The channel-layer group a batch's streams listen on."""
    return f"batch-{batch_id}"


def overall_for(stage: str, progress: float) -> float:
    """Overall percentage for ``progress`` percent through ``stage``."""
    if stage not in STAGE_SPAN:  # failed: the bar stays where it was
        return 0.0
    start, end = STAGE_SPAN[stage]
    return start + (end - start) * max(0.0, min(100.0, progress)) / 100.0


def record(batch: Batch, stage: str, message: str, progress: float = 0.0, *, now=None) -> ProgressEvent:
    """Record one event of ``stage`` for ``batch`` and announce it once the
    transaction commits.

    ``batch`` is the row as read just after the move that locked it, in the
    same transaction (``lifecycle.py``): so events of one batch get
    increasing ids in the order of their overall percentage, and the event's
    counts and times are the row's. ``progress`` is the percentage within
    the stage; the batch's ``overall_percentage`` never goes backwards.
    """
    now = now or timezone.now()
    overall = max(batch.overall_percentage, overall_for(stage, progress))
    logger.info("Publishing progress: batch=%s stage=%s message=%s", batch.pk, stage, message)
    event = ProgressEvent.objects.create(
        batch_id=batch.pk,
        stage=stage,
        message=message,
        progress_percentage=max(0.0, min(100.0, progress)),
        overall_percentage=overall,
        sheets_total=batch.sheets_total,
        sheets_processed=batch.sheets_processed,
        sheets_failed=batch.sheets_failed,
        sheets_needs_review=batch.sheets_needs_review,
        elapsed_seconds=batch.elapsed_seconds(now),
        timestamp=now,
    )
    if overall != batch.overall_percentage:
        Batch.objects.filter(pk=batch.pk).update(overall_percentage=overall)
        batch.overall_percentage = overall
    batch_id = batch.pk
    transaction.on_commit(lambda: wake(batch_id, event.id))
    return event


def wake(batch_id, event_id: int | None = None) -> None:
    """Tell live streams of ``batch_id`` to read new events. Never raises: the
    event is already in the database, and streams poll it as a safety net.

    A worker process hands the wake-up to an event loop of its own and goes
    on: ``async_to_sync`` would start a loop, and with it a Redis connection,
    for every call (about 4 ms, twice per stage, in the stages the whole batch
    waits for)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "progress.wake", "id": event_id}
    if settings.OMR_PROCESS_ROLE == "worker":
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group_name(batch_id), message), _wake_loop())
        future.add_done_callback(lambda f: _log_wake_error(batch_id, f))
        return
    try:
        async_to_sync(layer.group_send)(group_name(batch_id), message)
    except Exception as exc:  # Redis down or full: streams converge from the database
        logger.warning("Progress wake-up for batch=%s not sent: %s", batch_id, exc)


def _log_wake_error(batch_id, future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("Progress wake-up for batch=%s not sent: %s", batch_id, future.exception())


_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _wake_loop() -> asyncio.AbstractEventLoop:
    """This process's wake-up loop, on a daemon thread; a new one after a fork
    (Dramatiq forks its worker processes), since threads do not survive it."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="omr-progress-wake", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]
