"""Lost work found and sent out again, by the workers themselves.

Messages get lost: Redis restarted without its data, a send that failed (Redis
down just then), a move to the next stage that never happened (the database
went away between storing the last sheet and the advance). The database is
the source of truth, so every ``OMR_RECOVERY_INTERVAL`` seconds one worker
process (whichever takes the ``recover-lost-work`` lease, a conditional
UPDATE) looks at the unfinished batches that have shown no sign of life for
``OMR_RECOVERY_IDLE`` seconds and sends their work out again:

- processing_sheets with sheets nobody holds (pending, or claimed long ago):
  those sheets, in new chunks; with every sheet stored but the batch not
  moved on: the counts are taken from the sheet rows and the batch moves on;
- a finishing stage: the finish again; any earlier stage: the start again.

Nothing is done twice: a sheet is stored only by the message that claimed it
(``fanout.claim_sheets``), and a start or finish only by the message that
claimed the batch (``claims.py``). Pending sheets wait while another batch is
at work: they may be queued behind it, and sending them again would only
fill the queue with duplicates.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Max
from django.utils import timezone

from .. import lifecycle
from ..models import Batch, ProgressEvent, Sheet, SheetStatus, Stage
from . import claims, fanout, tasks

logger = logging.getLogger(__name__)

LEASE_NAME = "recover-lost-work"
_FINISHING = {Stage.COLLECTING_RESULTS, Stage.GENERATING_CSV, Stage.LOADING_DATABASE, Stage.CLEANUP}


def last_activity(batch: Batch) -> datetime | None:
    """The last sign of life of a batch: its last event, a sheet claimed or
    stored, its start or finish claim renewed."""
    event = ProgressEvent.objects.filter(batch=batch).order_by("-id").values_list("timestamp", flat=True).first()
    sheets = Sheet.objects.filter(batch=batch).aggregate(claimed=Max("claimed_at"), read=Max("read_at"))
    return max(filter(None, [event, sheets["claimed"], sheets["read"], batch.run_claimed_at]), default=None)


def recover(idle: timedelta, now: datetime | None = None) -> list[str]:
    """Send out again the work of batches idle for ``idle``; returns what was
    done, one line per batch."""
    now = now or timezone.now()
    cutoff = now - idle
    # A batch still uploading without its file is a resumable upload in
    # progress: nothing to restart (cleanup_uploads expires it).
    batches = list(Batch.objects.exclude(stage__in=[Stage.COMPLETED, Stage.FAILED])
                   .exclude(stage=Stage.UPLOADING, upload=""))
    activity = {b.pk: last_activity(b) for b in batches}
    others_busy = {b.pk: any(a is not None and a > cutoff for pk, a in activity.items() if pk != b.pk)
                   for b in batches}
    done = []
    for batch in batches:
        last = activity[batch.pk]
        if last is not None and last > cutoff:
            continue
        line = _recover_batch(batch, others_busy[batch.pk])
        if line:
            logger.warning("Recovery: batch %s idle since %s: %s", batch.pk, last, line)
            done.append(f"{batch.pk}: {line}")
    return done


def _recover_batch(batch: Batch, others_busy: bool) -> str:
    if batch.stage == Stage.PROCESSING_SHEETS:
        chunks = fanout.stale_chunks(batch.pk)
        if chunks:
            if others_busy:
                return ""
            tasks.send_chunks(str(batch.pk), chunks)
            return f"{sum(map(len, chunks))} sheets sent again"
        if Sheet.objects.filter(batch=batch, status=SheetStatus.RUNNING).exists():
            return ""  # held by a worker whose claim has not expired
        Batch.objects.recount_sheets(batch.pk)
        if lifecycle.finish_processing(batch.pk) is not None:
            tasks.finish_batch.send(str(batch.pk))
            return "every sheet stored: moved on to collecting_results"
        return ""
    if batch.stage in _FINISHING:
        tasks.finish_batch.send(str(batch.pk))
        return f"finishing again from {batch.stage}"
    tasks.process_batch.send(str(batch.pk))
    return f"started again from {batch.stage}"


def run_once(holder: str, interval: float, idle: float) -> list[str]:
    """The periodic job's turn: recover lost work when this process holds the lease."""
    if not claims.take_lease(LEASE_NAME, holder, interval * 0.9):
        return []
    return recover(timedelta(seconds=idle))


class RecoveryThread:
    """The recovery job in a worker process: a daemon thread that takes its
    turn every ``interval`` seconds (with a little jitter, so the processes do
    not all ask at once)."""

    def __init__(self, interval: float, idle: float):
        self.interval, self.idle = interval, idle
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omr-recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval * random.uniform(0.8, 1.2)):
            try:
                run_once(self.holder, self.interval, self.idle)
            except Exception as exc:  # the database or Redis may be down: try again next turn
                logger.warning("Recovery job: %s", exc)
            finally:
                connection.close()
