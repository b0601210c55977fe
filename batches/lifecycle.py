"""A batch's life: the moves between its stages.

Each move is one conditional UPDATE that names the stages the batch may
leave, so two processes can never both make it (the loser's UPDATE matches no
row), and each move records its event through ``progress.record`` in the same
transaction. Nothing else writes a batch's ``stage``, ``started_at``,
``finished_at`` or ``error``.

A move returns the event it recorded, or ``None`` when the batch is gone or
not in a stage it may leave (finished, failed, or already further on).

    queued/uploading -> validating -> ... -> processing_sheets
        -> collecting_results -> ... -> cleanup -> completed
    any stage before completed -> failed -> queued (retry)
    completed -> processing_sheets (reopen: the sheets the server failed are read again)
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import STAGE_ORDER, TERMINAL_STAGES, Batch, ProgressEvent, Stage
from .progress import record

logger = logging.getLogger(__name__)

#: Stages a batch is in before its run starts (``started_at`` stays empty).
_BEFORE_START = frozenset({Stage.QUEUED.value, Stage.UPLOADING.value})
_RUNNING = [s for s in STAGE_ORDER if s not in TERMINAL_STAGES]


def advance(batch: Batch | str, stage: str, message: str, *, progress: float = 0.0) -> ProgressEvent | None:
    """Move the batch forward to ``stage``, or report progress within it: the
    batch may be in any running stage up to ``stage``, never past it."""
    now = timezone.now()
    changes = {"stage": stage}
    if stage not in _BEFORE_START:
        changes["started_at"] = Coalesce(F("started_at"), Value(now, output_field=DateTimeField()))
    allowed = _RUNNING[:_RUNNING.index(stage) + 1]
    return _move(batch, allowed, changes, stage, message, progress, now)


def finish_processing(batch: Batch | str) -> ProgressEvent | None:
    """processing_sheets -> collecting_results, once every sheet is stored.
    The event is processing_sheets' last one (100 %); of several callers
    storing the last sheets at once, exactly one moves the batch."""
    batch_id = _pk(batch)
    with transaction.atomic():
        moved = Batch.objects.filter(pk=batch_id, stage=Stage.PROCESSING_SHEETS,
                                     sheets_processed__gte=F("sheets_total")).update(stage=Stage.COLLECTING_RESULTS)
        if moved != 1:
            return None
        row = Batch.objects.get(pk=batch_id)
        return record(row, Stage.PROCESSING_SHEETS,
                      f"All {row.sheets_total} sheets processed ({row.sheets_failed} failed)", 100.0)


def complete(batch: Batch | str, message: str) -> ProgressEvent | None:
    """cleanup -> completed."""
    now = timezone.now()
    return _move(batch, [Stage.CLEANUP], {"stage": Stage.COMPLETED, "finished_at": now}, Stage.COMPLETED, message,
                 100.0, now)


def fail(batch: Batch | str, reason: str) -> ProgressEvent | None:
    """Any running stage -> failed, saying why in plain words."""
    logger.warning("Batch %s failed: %s", _pk(batch), reason)
    return _fail(batch, _RUNNING, reason, f"Batch failed: {reason}")


def fail_upload(batch: Batch | str, reason: str) -> ProgressEvent | None:
    """uploading -> failed: the file never arrived whole (expired, or not the
    file the client declared)."""
    logger.warning("Upload of batch %s failed: %s", _pk(batch), reason)
    return _fail(batch, [Stage.UPLOADING], reason, reason)


def retry(batch: Batch | str, message: str) -> ProgressEvent | None:
    """failed -> queued: the batch runs again from the start (the caller
    queues it). Its percentage stays where it was until the run passes it."""
    changes = {"stage": Stage.QUEUED, "error": "", "started_at": None, "finished_at": None, "run_claim": ""}
    return _move(batch, [Stage.FAILED], changes, Stage.QUEUED, message, 0.0, timezone.now())


def reopen(batch: Batch | str, message: str) -> ProgressEvent | None:
    """completed -> processing_sheets: some sheets are read again (the caller
    sets them pending and sends them out, in the same transaction); the batch
    then finishes again, regenerating its results."""
    changes = {"stage": Stage.PROCESSING_SHEETS, "finished_at": None, "run_claim": ""}
    return _move(batch, [Stage.COMPLETED], changes, Stage.PROCESSING_SHEETS, message, 0.0, timezone.now())


def _fail(batch, allowed, reason: str, message: str) -> ProgressEvent | None:
    now = timezone.now()
    return _move(batch, allowed, {"stage": Stage.FAILED, "finished_at": now, "error": reason}, Stage.FAILED, message,
                 0.0, now)


def _pk(batch: Batch | str):
    return batch.pk if isinstance(batch, Batch) else batch


def _move(batch, allowed, changes: dict, stage: str, message: str, progress: float, now) -> ProgressEvent | None:
    batch_id = _pk(batch)
    with transaction.atomic():
        if Batch.objects.filter(pk=batch_id, stage__in=allowed).update(**changes) != 1:
            logger.info("Batch %s not moved to %s (%s): gone, or not in %s", batch_id, stage, message,
                        ", ".join(allowed))
            return None
        row = Batch.objects.get(pk=batch_id)
        event = record(row, stage, message, progress, now=now)
    if isinstance(batch, Batch):
        for name in ("stage", "started_at", "finished_at", "error", "overall_percentage"):
            setattr(batch, name, getattr(row, name))
    return event
