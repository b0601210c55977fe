"""processing_sheets: the fan-out. Each worker message reads a chunk of
sheets and stores them in one transaction; sheets are claimed by a
conditional UPDATE with a lease, so a message delivered twice, or again
after its worker died, never stores a sheet twice; the call that stores the
last sheet moves the batch on."""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import lifecycle
from ..models import Answer, Batch, Sheet, SheetStatus, Stage
from . import reading
from .bulk import insert_answers, update_sheets
from .reading import SheetResult, failed_result

logger = logging.getLogger(__name__)

#: A sheet claimed by a worker that has not stored it after this long is
#: considered abandoned and may be claimed again (longer than the actor's time limit).
SHEET_LEASE = timedelta(minutes=15)


def chunk_size(total: int) -> int:
    """Sheets per worker message: small enough that the work spreads evenly over
    the workers to the end, large enough that each chunk's database round trip
    is shared by several sheets."""
    return max(1, min(settings.OMR_CHUNK_SIZE, math.ceil(total / 8)))


def split_chunks(ids: list[int]) -> list[list[int]]:
    """The messages of a fan-out: chunks of ``chunk_size`` sheets, then the last
    few chunks' worth of sheets in small pieces, so that the workers run out
    of work together instead of one reading a whole chunk while the others
    wait (each worker also holds a prefetched message)."""
    size = chunk_size(len(ids))
    small = max(1, size // 4)
    tail = min(len(ids), 4 * size) if size > small else 0
    head, rest = ids[:len(ids) - tail], ids[len(ids) - tail:]
    return ([head[i:i + size] for i in range(0, len(head), size)]
            + [rest[i:i + small] for i in range(0, len(rest), small)])


def store_results(batch_id, token: str, results: list[SheetResult]) -> int:
    """Store the results of sheets still claimed with ``token``, all in one
    transaction: answer rows replaced in bulk, sheet rows updated in bulk, batch
    counts moved by the number of sheets that changed state. A sheet stored by
    someone else meanwhile (a duplicate message) is left alone. Returns how many
    sheets were stored."""
    if not results:
        return 0
    now = timezone.now()
    with transaction.atomic():
        live = set(
            Sheet.objects.select_for_update()
            .filter(batch_id=batch_id, pk__in=[r.sheet_id for r in results], status=SheetStatus.RUNNING,
                    claim_token=token)
            .values_list("pk", flat=True)
        )
        results = [r for r in results if r.sheet_id in live]
        if not results:
            return 0
        Answer.objects.filter(sheet_id__in=live).delete()
        insert_answers([row for r in results for row in r.rows])
        values = [{**r.sheet_values(), "claim_token": "", "pk": r.sheet_id} for r in results]
        update_sheets(values, now)
        failed = sum(r.status == SheetStatus.FAILED for r in results)
        review = sum(v["needs_review"] for v in values)
        Batch.objects.filter(pk=batch_id).update(
            sheets_processed=F("sheets_processed") + len(results),
            sheets_failed=F("sheets_failed") + failed,
            sheets_needs_review=F("sheets_needs_review") + review,
        )
        _maybe_publish_processing(batch_id, now)
    return len(results)


def _maybe_publish_processing(batch_id, now) -> None:
    # One event every few seconds or every N sheets, whichever comes first,
    # never one per sheet: a conditional UPDATE hands the turn to one worker.
    row = Batch.objects.filter(pk=batch_id).values("sheets_total").first()
    if row is None:
        return
    every = max(10, math.ceil(row["sheets_total"] / 20))
    since = now - timedelta(seconds=settings.OMR_PROGRESS_INTERVAL)
    won = (
        Batch.objects.filter(pk=batch_id, stage=Stage.PROCESSING_SHEETS, sheets_processed__lt=F("sheets_total"))
        .filter(Q(progress_published_at__isnull=True) | Q(progress_published_at__lt=since)
                | Q(sheets_processed__gte=F("progress_published_count") + every))
        .update(progress_published_at=now, progress_published_count=F("sheets_processed"))
    )
    if won:
        counts = Batch.objects.filter(pk=batch_id).values("sheets_processed", "sheets_total").first()
        done, total = counts["sheets_processed"], counts["sheets_total"]
        lifecycle.advance(batch_id, Stage.PROCESSING_SHEETS, f"Processing: {done}/{total} sheets completed",
                          progress=100.0 * done / max(total, 1))


def claim_sheets(batch_id, sheet_ids: list[int], token: str) -> list[Sheet]:
    """Take the sheets of a chunk for this run: pending ones, ones this very
    message already held (it came back after its worker died), and ones whose
    claim has expired. One UPDATE decides; returns the sheets held."""
    now = timezone.now()
    Sheet.objects.filter(batch_id=batch_id, pk__in=sheet_ids).filter(
        Q(status=SheetStatus.PENDING)
        | Q(status=SheetStatus.RUNNING, claim_token=token)
        | Q(status=SheetStatus.RUNNING, claimed_at__lt=now - SHEET_LEASE)
    ).update(status=SheetStatus.RUNNING, claim_token=token, claimed_at=now)
    return list(Sheet.objects.filter(batch_id=batch_id, pk__in=sheet_ids, status=SheetStatus.RUNNING,
                                     claim_token=token).order_by("index")
                .only("pk", "index", "image", "image_offset", "image_length", "source_name", "attempts"))


def process_chunk(batch_id, sheet_ids: list[int], token: str | None = None, unstored: dict | None = None) -> bool:
    """processing_sheets: read the sheets ``sheet_ids`` and store their results.

    ``token`` identifies this run (the Dramatiq message id, which stays the same
    when the message is delivered again). Sheets are claimed with one UPDATE and
    stored with one transaction per chunk. When a sheet has been tried before
    (its worker died while reading it), the chunk goes carefully: one sheet at
    a time, each attempt counted, and a sheet that has stopped its worker
    ``OMR_SHEET_MAX_ATTEMPTS`` times is failed without another try.

    Only a crash while reading counts: ``unstored`` (kept in the message from
    one delivery to the next) holds the attempt counts the sheets had before a
    read that ended in an error of the server's own (the database went away
    before the results were stored); the next delivery puts them back.
    Returns True when this call moved the batch on to collecting_results.
    """
    token = token or uuid.uuid4().hex
    unstored = {} if unstored is None else unstored
    batch = Batch.objects.filter(pk=batch_id).only("pk", "stage", "has_qr", "template").first()
    if batch is None or batch.stage != Stage.PROCESSING_SHEETS:
        return False
    if unstored:
        _restore_attempts(batch_id, token, unstored)
    sheets = claim_sheets(batch_id, sheet_ids, token)
    max_attempts = settings.OMR_SHEET_MAX_ATTEMPTS
    if all(s.attempts == 0 for s in sheets):
        with _counting_attempts(sheets, unstored):
            t0 = time.perf_counter()
            results = [reading.read_sheet(s, batch) for s in sheets]
            t1 = time.perf_counter()
            logger.info("Batch %s: %d sheets read in %.2f s", batch_id, len(sheets), t1 - t0)
            store_results(batch_id, token, results)
        logger.info("Batch %s: %d sheets stored in %.2f s", batch_id, len(sheets), time.perf_counter() - t1)
    else:
        for s in sheets:
            if s.attempts >= max_attempts:
                reason = f"reading this page stopped its worker {s.attempts} times; it was given up"
                store_results(batch_id, token, [failed_result(s.pk, reason)])
                continue
            with _counting_attempts([s], unstored):
                t0 = time.perf_counter()
                result = reading.read_sheet(s, batch)
                logger.info("Batch %s: 1 sheets read in %.2f s (tried %d times before)", batch_id,
                            time.perf_counter() - t0, s.attempts)
                store_results(batch_id, token, [result])
    return lifecycle.finish_processing(batch_id) is not None


class _counting_attempts:
    """Raise the sheets' attempt counters before they are read (a crash while
    reading leaves them raised); when the block ends in an error instead, note
    the counts from before in ``unstored`` so that the next delivery puts them
    back. Once stored, the sheets are no longer anybody's business here."""

    def __init__(self, sheets: list[Sheet], unstored: dict):
        self.sheets, self.unstored = sheets, unstored

    def __enter__(self):
        ids = [s.pk for s in self.sheets]
        Sheet.objects.filter(pk__in=ids).update(attempts=F("attempts") + 1)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s in self.sheets:
            if exc_type is None:
                self.unstored.pop(str(s.pk), None)
            else:
                self.unstored.setdefault(str(s.pk), s.attempts)


def _restore_attempts(batch_id, token: str, unstored: dict) -> None:
    """Put back the attempt counts of sheets this message read but could not
    store (still held by it): the same values every time, so a delivery
    repeated after a crash does no harm."""
    for pk, attempts in unstored.items():
        Sheet.objects.filter(batch_id=batch_id, pk=int(pk), status=SheetStatus.RUNNING, claim_token=token).update(
            attempts=attempts)


#: Why a sheet was failed by the server's own trouble (not the sheet's): such
#: sheets are read again by a retry of their batch, even a completed one.
SERVER_TROUBLE = "this page could not be read or stored after several tries"


def server_failures(batch_id) -> list[int]:
    """Ids of the batch's sheets failed by the server's own trouble."""
    return list(Sheet.objects.filter(batch_id=batch_id, status=SheetStatus.FAILED, error=SERVER_TROUBLE)
                .order_by("index").values_list("pk", flat=True))


def reset_sheets(batch_id, sheet_ids: list[int]) -> list[list[int]]:
    """Make these sheets pending again (their answers removed, their counts
    taken off the batch): returns the chunks to send out."""
    Answer.objects.filter(sheet_id__in=sheet_ids).delete()
    Sheet.objects.filter(batch_id=batch_id, pk__in=sheet_ids).update(
        status=SheetStatus.PENDING, attempts=0, claim_token="", claimed_at=None, error="", flags=[], reading=None,
        needs_review=False, engine_review=False, read_at=None)
    Batch.objects.recount_sheets(batch_id)
    return split_chunks(sheet_ids)


def give_up_chunk(batch_id, sheet_ids: list[int], token: str) -> bool:
    """Mark the sheets of a chunk that failed every retry as failed, so the
    batch goes on without them. Returns True when that finished the batch's
    processing (as ``process_chunk``)."""
    held = list(Sheet.objects.filter(batch_id=batch_id, pk__in=sheet_ids)
                .filter(Q(status=SheetStatus.PENDING) | Q(status=SheetStatus.RUNNING))
                .values_list("pk", flat=True))
    if held:
        Sheet.objects.filter(pk__in=held).update(status=SheetStatus.RUNNING, claim_token=token)
        store_results(batch_id, token, [failed_result(pk, SERVER_TROUBLE) for pk in held])
    return lifecycle.finish_processing(batch_id) is not None


def stale_chunks(batch_id, older_than: timedelta = SHEET_LEASE) -> list[list[int]]:
    """Chunks of sheets that nobody is reading any more (lost messages after a
    Redis restart, or claims that expired): for the recovery job."""
    cutoff = timezone.now() - older_than
    ids = list(Sheet.objects.filter(batch_id=batch_id).filter(
        Q(status=SheetStatus.PENDING) | Q(status=SheetStatus.RUNNING, claimed_at__lt=cutoff)
    ).order_by("index").values_list("pk", flat=True))
    return split_chunks(ids)
