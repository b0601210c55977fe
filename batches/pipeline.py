"""The batch pipeline: the only place that runs the stages, in order.

Stages (docs/contracts.md): validating, extracting, organizing_qr, creating_sheets,
processing_sheets, collecting_results, generating_csv, loading_database,
cleanup, then completed or failed. Three entry points, each called by a thin
actor in ``tasks.py`` (or inline by ``manage.py process_batch``):

- ``start_batch``: the stages up to creating_sheets, then opens
  processing_sheets and returns the chunks of sheet ids to fan out.
- ``process_chunk``: reads a few sheets and stores their results in one
  transaction; the call that stores the last sheet moves the batch on (a
  conditional UPDATE decides, never a counter in memory).
- ``finish_batch``: collecting_results to completed.

Every stage is idempotent: it overwrites its own rows and files, and a stage
the batch is already past is skipped, so a message delivered twice or retried
after a crash does no harm.

Each page is read once, in the fan-out: finding the QR code takes most of a
full read, so organizing_qr only fixes the page order and the reading plan, and
collecting_results groups the pages by what their QR codes said (see
docs/server.md).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import timedelta

import orjson
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from . import csvexport, progress, sheet_templates, watchdog
from .extract import ExtractError, Limits, check_archive, display_name, iter_pages, sniff
from .models import Answer, Batch, Sheet, SheetStatus, Stage, stage_index

logger = logging.getLogger(__name__)

#: A sheet claimed by a worker that has not stored it after this long is
#: considered abandoned and may be claimed again (longer than the actor's time limit).
SHEET_LEASE = timedelta(minutes=15)


class BatchError(Exception):
    """A problem with the upload itself: the batch fails with this plain message."""


class BatchGone(Exception):
    """The batch was deleted (or finished) while a stage ran: stop quietly."""


# ---------------------------------------------------------------- helpers


def _past(batch: Batch, stage: str) -> bool:
    """True when ``batch`` has already finished ``stage``."""
    return stage_index(batch.stage) > stage_index(stage)


def pages_prefix(batch: Batch) -> str:
    return f"{batch.storage_prefix}pages/"


def manifest_name(batch: Batch) -> str:
    return f"{batch.storage_prefix}work/manifest.json"


def delete_prefix(prefix: str) -> None:
    """Delete every stored file under ``prefix`` (a folder of the batch)."""
    try:
        dirs, files = default_storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in files:
        default_storage.delete(prefix + name)
    for name in dirs:
        delete_prefix(f"{prefix}{name}/")
    try:  # the folder itself, now empty, where the storage has folders
        os.rmdir(default_storage.path(prefix))
    except (NotImplementedError, OSError):
        pass


def _save(name: str, data: bytes) -> str:
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(data))


def _template(name: str):
    """The template called ``name``, whatever its kind (``sheet_templates.Resolved``)."""
    return sheet_templates.resolve(name)


def _resolve_template(name: str):
    """Template lookup for QR codes: built-in and uploaded templates by name
    only (a QR code is untrusted input and must never name a file)."""
    return sheet_templates.resolve_for_qr(name)


def fail(batch: Batch | str, message: str) -> None:
    """Mark the batch failed, saying why in plain words."""
    batch_id = batch.pk if isinstance(batch, Batch) else batch
    logger.warning("Batch %s failed: %s", batch_id, message)
    progress.publish(batch_id, Stage.FAILED, f"Batch failed: {message}", error=message)


# ---------------------------------------------------------------- start: validating .. creating_sheets


def start_batch(batch_id) -> list[list[int]]:
    """Run validating, extracting, organizing_qr and creating_sheets, then open
    processing_sheets. Returns the chunks of sheet ids to read (empty when the
    batch is gone, finished, already dispatched, or failed here)."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.is_finished or _past(batch, Stage.CREATING_SHEETS):
        return []
    try:
        validate(batch)
        extract(batch)
        organize_qr(batch)
        create_sheets(batch)
        return open_processing(batch)
    except BatchError as exc:
        fail(batch, str(exc))
        return []
    except BatchGone:
        return []


def validate(batch: Batch) -> None:
    """validating: the stored upload is whole, of a supported kind, and (for a
    ZIP) every entry passes the archive checks before anything is extracted."""
    if _past(batch, Stage.VALIDATING):
        return
    progress.publish(batch, Stage.VALIDATING, f"Checking {display_name(batch.original_filename)}")
    try:
        _template(batch.template)
    except (FileNotFoundError, ValueError) as exc:
        raise BatchError(str(exc)) from None
    if not batch.upload or not default_storage.exists(batch.upload.name):
        raise BatchError("the uploaded file is missing from storage")
    with default_storage.open(batch.upload.name, "rb") as f:
        head = f.read(1024)
        f.seek(0, io.SEEK_END)
        size = f.tell()
        if size != batch.size:
            raise BatchError(f"the stored upload has {size} bytes, not the {batch.size} received")
        if size == 0:
            raise BatchError(f"{display_name(batch.original_filename)} is empty")
        kind = sniff(head)
        message = f"{display_name(batch.original_filename)} is a valid upload"
        if batch.extension == ".zip":
            if kind != "zip":
                raise BatchError(f"{display_name(batch.original_filename)} is not a ZIP archive")
            f.seek(0)
            try:
                plan = check_archive(f, batch.original_filename, Limits.from_settings())
            except ExtractError as exc:
                raise BatchError(str(exc)) from None
            if not plan.members:
                raise BatchError("the archive holds no images or PDF files")
            message = f"Archive is valid: {len(plan.members)} image/PDF files"
            if plan.skipped:
                message += f", {len(plan.skipped)} other files skipped"
        elif batch.extension == ".pdf" and kind != "pdf":
            raise BatchError(f"{display_name(batch.original_filename)} is not a PDF file")
        elif kind in {"zip", "gzip", "7z", "rar"}:
            raise BatchError(f"{display_name(batch.original_filename)} is an archive; upload it as .zip")
    progress.publish(batch, Stage.VALIDATING, message, progress=100)


def extract(batch: Batch) -> None:
    """extracting: every page of the upload stored as its own image file, and a
    manifest listing them in file order. Partial output is removed on failure."""
    if _past(batch, Stage.EXTRACTING):
        return
    progress.publish(batch, Stage.EXTRACTING, f"Extracting pages from {display_name(batch.original_filename)}")
    prefix = pages_prefix(batch)
    delete_prefix(prefix)
    manifest = []
    last_event = time.monotonic()
    try:
        with default_storage.open(batch.upload.name, "rb") as f, _PageWriter() as writer:
            for page in iter_pages(f, batch.original_filename, Limits.from_settings()):
                index = len(manifest) + 1
                entry = {"index": index, "source": page.source_name, "page": page.source_page, "image": ""}
                if page.span is not None:
                    # An entry stored uncompressed is read in place: no copy of it is written.
                    entry.update(image=batch.upload.name, offset=page.span[0], length=page.span[1])
                else:
                    writer.save(entry, f"{prefix}{index:05d}{page.extension}", page.data)
                manifest.append(entry)
                if time.monotonic() - last_event > settings.OMR_PROGRESS_INTERVAL:
                    last_event = time.monotonic()
                    if progress.publish(batch, Stage.EXTRACTING, f"Extracted {index} pages", progress=50) is None:
                        raise BatchGone()  # deleted (or failed) meanwhile: stop writing its files
    except BatchGone:
        delete_prefix(prefix)
        raise
    except ExtractError as exc:
        delete_prefix(prefix)
        raise BatchError(str(exc)) from None
    except OSError as exc:  # disk full, storage down: nothing half-written stays
        delete_prefix(prefix)
        raise BatchError(f"the pages could not be stored ({exc.strerror or exc})") from None
    if not manifest:
        raise BatchError("the upload holds no pages to read")
    _save(manifest_name(batch), json.dumps(manifest).encode())
    sources = len({m["source"] for m in manifest})
    progress.publish(batch, Stage.EXTRACTING, f"Extraction complete: {len(manifest)} pages from {sources} files",
                     progress=100)


class _PageWriter:
    """Stores extracted pages on a thread beside the reading of the archive.

    Reading a member (with its CRC check) and writing the page each cost about
    as much, and both let go of the GIL, so the two overlap: extraction, a
    stage the whole batch waits for on one core, takes about half as long. At
    most ``ahead`` pages wait in memory. ``save`` fills ``entry["image"]`` once
    the page is stored; leaving the block waits for every page, and raises the
    first storage error (after the rest have stopped)."""

    def __init__(self, ahead: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omr-extract-write")
        self._pending: deque = deque()
        self._ahead = ahead

    def save(self, entry: dict, name: str, data: bytes) -> None:
        self._pending.append((entry, self._pool.submit(_save, name, data)))
        while len(self._pending) > self._ahead:
            self._finish_one()

    def _finish_one(self) -> None:
        entry, future = self._pending.popleft()
        entry["image"] = future.result()

    def __enter__(self) -> _PageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._finish_one()
        finally:
            # On any error, nothing more starts and nothing still runs when the
            # caller removes the partial output.
            self._pool.shutdown(wait=True, cancel_futures=True)


def _manifest(batch: Batch) -> list[dict]:
    try:
        with default_storage.open(manifest_name(batch), "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise BatchError("the list of extracted pages is missing; retry the batch") from None


def organize_qr(batch: Batch) -> None:
    """organizing_qr: fixes the reading plan. Pages stay in file order; with QR
    codes each page's code is read together with its bubbles in processing_sheets
    (one read per page) and pages are grouped by it in collecting_results."""
    if _past(batch, Stage.ORGANIZING_QR):
        return
    progress.publish(batch, Stage.ORGANIZING_QR, "Planning the reading order")
    count = len(_manifest(batch))
    if batch.has_qr:
        message = f"{count} pages in file order; each page's QR code is read with its answers"
    else:
        message = f"{count} pages in file order, read as {batch.template}; students found by their number grid"
    progress.publish(batch, Stage.ORGANIZING_QR, message, progress=100)


def create_sheets(batch: Batch) -> None:
    """creating_sheets: one ``Sheet`` row per page (replacing any earlier ones)."""
    if _past(batch, Stage.CREATING_SHEETS):
        return
    progress.publish(batch, Stage.CREATING_SHEETS, "Creating sheet records")
    manifest = _manifest(batch)
    with transaction.atomic():
        Sheet.objects.filter(batch=batch).delete()
        Sheet.objects.bulk_create(
            [Sheet(batch=batch, index=m["index"], source_name=m["source"][:300], source_page=m["page"],
                   image=m["image"], image_offset=m.get("offset"), image_length=m.get("length"))
             for m in manifest],
            batch_size=1000,
        )
        Batch.objects.filter(pk=batch.pk).update(sheets_total=len(manifest), sheets_processed=0, sheets_failed=0,
                                                 sheets_needs_review=0, progress_published_count=0,
                                                 progress_published_at=None)
    batch.sheets_total = len(manifest)
    progress.publish(batch, Stage.CREATING_SHEETS, f"Created {len(manifest)} sheets", progress=100)


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


def open_processing(batch: Batch) -> list[list[int]]:
    """processing_sheets starts: returns the chunks of pending sheet ids."""
    ids = list(Sheet.objects.filter(batch=batch, status=SheetStatus.PENDING).order_by("index")
               .values_list("pk", flat=True))
    chunks = split_chunks(ids)
    progress.publish(batch, Stage.PROCESSING_SHEETS,
                     f"Dispatching {len(ids)} sheets to the workers in {len(chunks)} chunks")
    return chunks


# ---------------------------------------------------------------- processing_sheets (fan-out)


@dataclass
class SheetResult:
    """What one read gives one sheet row (and its answer rows)."""

    sheet_id: int
    status: str
    reading: dict | None = None
    error: str = ""
    rows: list[tuple] = field(default_factory=list)  # answer rows for insert_answers()
    fields: dict = field(default_factory=dict)

    @property
    def answers(self) -> list[Answer]:
        """The answer rows as (unsaved) ``Answer`` objects."""
        return [Answer(sheet_id=r[0], field=r[1], value=r[2], confidence=r[3], flags=r[4], corrected=r[5])
                for r in self.rows]


def read_sheet(sheet: Sheet, batch: Batch) -> SheetResult:
    """Read one stored page with the engine. Never raises for a bad page: the
    result is a failed sheet with the reason."""
    from .omr.reader import read_image_bytes

    try:
        data = sheet.read_image()
    except OSError as exc:
        return SheetResult(sheet.pk, SheetStatus.FAILED, error=f"page image missing ({exc.strerror or exc})")
    chosen = _template(batch.template)
    try:
        with watchdog.page_time_limit(settings.OMR_SHEET_TIME_LIMIT, f"Reading page {sheet.index} of batch {batch.pk}"):
            if chosen.is_omrchecker:
                # OMRChecker sheets carry no QR code: always the batch's template.
                from .omr.omrchecker import read_omrchecker_image_bytes

                readings = read_omrchecker_image_bytes(data, chosen.template, source=sheet.source_name,
                                                       max_pixels=settings.OMR_MAX_PIXELS)
            else:
                template = None if batch.has_qr else chosen.template
                readings = read_image_bytes(data, template, source=sheet.source_name, resolve=_resolve_template,
                                            max_pixels=settings.OMR_MAX_PIXELS)
    except Exception as exc:  # an engine bug must cost one sheet, not the batch
        logger.exception("Reading sheet %s of batch %s failed", sheet.index, batch.pk)
        return SheetResult(sheet.pk, SheetStatus.FAILED, error=f"could not read this page ({type(exc).__name__})")
    if not readings:
        return SheetResult(sheet.pk, SheetStatus.FAILED, error="no page found in the image")
    reading = readings[0].to_dict()
    if (reading.get("error") or "").endswith(" MP") and "over the limit of" in reading["error"]:
        reading["error"] += " (OMR_MAX_PIXELS)"  # the engine knows no settings; the user may change this one
    if len(readings) > 1:
        reading["sheet_flags"] = [*reading.get("sheet_flags", []), "extra_pages"]
        reading["needs_review"] = True
    return result_from_reading(sheet.pk, reading, batch)


def reading_in_doubt(reading: dict | None) -> bool:
    """The product's rule: any doubt goes to review (an error, a sheet flag, a
    field flag other than a plain blank), even if the engine's summary missed it."""
    if not reading:
        return True
    if reading.get("needs_review") or reading.get("error") or reading.get("sheet_flags"):
        return True
    return any(set(f) - {"blank"} for f in (reading.get("flags") or {}).values())


def result_from_reading(sheet_id: int, reading: dict, batch: Batch) -> SheetResult:
    """Turn an engine reading (``SheetReading.to_dict()``) into row values."""
    error = reading.get("error") or ""
    qr = reading.get("qr") or {}
    answers = reading.get("answers") or {}
    confidence = reading.get("confidence") or {}
    flags = reading.get("flags") or {}
    needs_review = reading_in_doubt(reading)
    stored = dict(reading)
    if not needs_review:
        stored.pop("bubbles", None)  # kept only where a reviewer will look at them
    qr_text = ""
    if qr:
        from .omr.payload import QrPayload

        try:
            qr_text = QrPayload(**qr).encode()
        except TypeError:
            qr_text = json.dumps(qr)[:300]
    values = {
        "template": (reading.get("template") or "")[:64],
        "template_page": reading.get("page"),
        "qr_payload": qr_text[:300],
        "qr_error": (reading.get("qr_error") or "")[:300],
        "student": str(qr.get("student") or answers.get("student_number") or "")[:64],
        "exam": str(qr.get("exam") or "")[:64],
        "needs_review": needs_review,
        "engine_review": needs_review,
        "flags": list(reading.get("sheet_flags") or []),
        "error": error,
        "reading": stored,
    }
    rows = [
        (sheet_id, name[:64], str(value)[:64],
         confidence.get(name) if isinstance(confidence, dict) else None,
         list(flags.get(name) or []), False)
        for name, value in answers.items()
    ]
    status = SheetStatus.FAILED if error and not answers else SheetStatus.DONE
    return SheetResult(sheet_id, status, reading=stored, error=error, rows=rows, fields=values)


def _failed_result(sheet_id: int, reason: str) -> SheetResult:
    return SheetResult(sheet_id, SheetStatus.FAILED, error=reason,
                       fields={"needs_review": True, "engine_review": True, "error": reason, "flags": ["unreadable"],
                               "reading": None})


#: What a stored result resets on its sheet row, unless the result says otherwise.
_SHEET_DEFAULTS = {"claim_token": "", "template": "", "template_page": None, "qr_payload": "", "qr_error": "",
                   "student": "", "exam": "", "needs_review": True, "engine_review": True, "flags": [], "error": "",
                   "reading": None}

_SHEET_FIELDS = ["status", "template", "template_page", "qr_payload", "qr_error", "student", "exam", "needs_review",
                 "engine_review", "flags", "error", "reading", "read_at", "claim_token"]


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_EMPTY_JSON_LIST = "[]"


def _json_text(value) -> str:
    """JSON text of a reading or a flag list. The stdlib encoder took half the
    time of storing a chunk (a reading kept for review is ~30 KB); orjson writes
    the same JSON about 20x faster."""
    return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()


def _json_param(value):
    """A JSON value as a query parameter for a JSONField column, encoded with
    orjson (jsonb on PostgreSQL, text on SQLite)."""
    if value is None:
        return None
    if connection.vendor == "postgresql":
        from psycopg.types.json import Jsonb

        return Jsonb(value, dumps=_json_text)
    return _json_text(value)


def insert_answers(rows: list[tuple]) -> None:
    """Insert answer rows ``(sheet_id, field, value, confidence, flags_json,
    corrected)`` in one ``executemany``. About 100 rows per sheet: building a
    model instance for each cost more than reading the page did, so this one
    hot path skips the ORM."""
    if not rows:
        return
    meta = Answer._meta
    qn = connection.ops.quote_name
    columns = ", ".join(qn(meta.get_field(name).column)
                        for name in ("sheet", "field", "value", "confidence", "flags", "corrected"))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # psycopg's executemany still sends one statement per row; COPY
            # streams them all (flags as JSON text, which jsonb reads as such).
            with cursor.cursor.copy(f"COPY {qn(meta.db_table)} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row((*row[:4], _json_text(row[4]) if row[4] else _EMPTY_JSON_LIST, row[5]))
        else:
            cursor.executemany(f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES (%s, %s, %s, %s, %s, %s)",
                               [(*row[:4], _json_text(row[4]) if row[4] else _EMPTY_JSON_LIST, row[5])
                                for row in rows])


_JSON_SHEET_FIELDS = {"flags", "reading"}


def update_sheets(values: list[dict], now) -> None:
    """Write the result fields of several sheets: one ``executemany`` of plain
    UPDATEs (``bulk_update``'s CASE expressions cost more to build than the
    database takes to run them). ``values``: dicts with ``pk`` and every field of
    ``_SHEET_FIELDS`` except ``read_at`` (set to ``now``)."""
    if not values:
        return
    meta = Sheet._meta
    qn = connection.ops.quote_name
    names = [n for n in _SHEET_FIELDS if n != "read_at"]
    assignments = ", ".join(f"{qn(meta.get_field(n).column)} = %s" for n in [*names, "read_at"])
    sql = f"UPDATE {qn(meta.db_table)} SET {assignments} WHERE {qn(meta.pk.column)} = %s"
    read_at = connection.ops.adapt_datetimefield_value(now)
    rows = []
    for v in values:
        row = [_json_param(v[n]) if n in _JSON_SHEET_FIELDS else v[n] for n in names]
        rows.append((*row, read_at, v["pk"]))
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


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
        update_sheets([{**_SHEET_DEFAULTS, **r.fields, "status": r.status, "pk": r.sheet_id} for r in results], now)
        failed = sum(r.status == SheetStatus.FAILED for r in results)
        review = sum(bool(r.fields.get("needs_review")) for r in results)
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
        progress.publish(batch_id, Stage.PROCESSING_SHEETS, f"Processing: {done}/{total} sheets completed",
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


def process_chunk(batch_id, sheet_ids: list[int], token: str | None = None) -> bool:
    """processing_sheets: read the sheets ``sheet_ids`` and store their results.

    ``token`` identifies this run (the Dramatiq message id, which stays the same
    when the message is delivered again). Sheets are claimed with one UPDATE and
    stored with one transaction per chunk. When a sheet has been tried before
    (its worker died), the chunk goes carefully: one sheet at a time, each
    attempt counted, and a sheet that has stopped its worker
    ``OMR_SHEET_MAX_ATTEMPTS`` times is failed without another try.
    Returns True when this call moved the batch on to collecting_results.
    """
    token = token or uuid.uuid4().hex
    batch = Batch.objects.filter(pk=batch_id).only("pk", "stage", "has_qr", "template").first()
    if batch is None or batch.stage != Stage.PROCESSING_SHEETS:
        return False
    sheets = claim_sheets(batch_id, sheet_ids, token)
    max_attempts = settings.OMR_SHEET_MAX_ATTEMPTS
    if all(s.attempts == 0 for s in sheets):
        Sheet.objects.filter(pk__in=[s.pk for s in sheets]).update(attempts=F("attempts") + 1)
        t0 = time.perf_counter()
        results = [read_sheet(s, batch) for s in sheets]
        t1 = time.perf_counter()
        store_results(batch_id, token, results)
        logger.info("Batch %s: %d sheets read in %.2f s, stored in %.2f s", batch_id, len(sheets), t1 - t0,
                    time.perf_counter() - t1)
    else:
        for s in sheets:
            if s.attempts >= max_attempts:
                reason = f"reading this page stopped its worker {s.attempts} times; it was given up"
                store_results(batch_id, token, [_failed_result(s.pk, reason)])
                continue
            Sheet.objects.filter(pk=s.pk).update(attempts=F("attempts") + 1)
            store_results(batch_id, token, [read_sheet(s, batch)])
    return advance_if_done(batch_id)


def give_up_chunk(batch_id, sheet_ids: list[int], token: str) -> bool:
    """Mark the sheets of a chunk that failed every retry as failed, so the
    batch goes on without them. Returns True when that finished the batch's
    processing (as ``advance_if_done``)."""
    held = list(Sheet.objects.filter(batch_id=batch_id, pk__in=sheet_ids)
                .filter(Q(status=SheetStatus.PENDING) | Q(status=SheetStatus.RUNNING))
                .values_list("pk", flat=True))
    if held:
        Sheet.objects.filter(pk__in=held).update(status=SheetStatus.RUNNING, claim_token=token)
        reason = "this page could not be read or stored after several tries"
        store_results(batch_id, token, [_failed_result(pk, reason) for pk in held])
    return advance_if_done(batch_id)


def advance_if_done(batch_id) -> bool:
    """Move the batch from processing_sheets to collecting_results once every
    sheet is stored. The conditional UPDATE lets exactly one caller win."""
    with transaction.atomic():
        won = Batch.objects.filter(
            pk=batch_id, stage=Stage.PROCESSING_SHEETS, sheets_processed__gte=F("sheets_total")
        ).update(stage=Stage.COLLECTING_RESULTS)
        if won != 1:
            return False
        row = Batch.objects.get(pk=batch_id)
        progress.publish(row, Stage.PROCESSING_SHEETS,
                         f"All {row.sheets_total} sheets processed ({row.sheets_failed} failed)", progress=100)
        # publish() records the stage of the event; the batch itself has moved on.
        Batch.objects.filter(pk=batch_id).update(stage=Stage.COLLECTING_RESULTS)
    return True


def stale_chunks(batch_id, older_than: timedelta = SHEET_LEASE) -> list[list[int]]:
    """Chunks of sheets that nobody is reading any more (lost messages after a
    Redis restart, or claims that expired): for the reconcile command."""
    cutoff = timezone.now() - older_than
    ids = list(Sheet.objects.filter(batch_id=batch_id).filter(
        Q(status=SheetStatus.PENDING) | Q(status=SheetStatus.RUNNING, claimed_at__lt=cutoff)
    ).order_by("index").values_list("pk", flat=True))
    return split_chunks(ids)


# ---------------------------------------------------------------- finish: collecting_results .. completed


def finish_batch(batch_id) -> None:
    """collecting_results, generating_csv, loading_database, cleanup, completed."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.is_finished or stage_index(batch.stage) < stage_index(Stage.COLLECTING_RESULTS):
        return
    try:
        collect_results(batch)
        generate_csv(batch)
        load_database(batch)
        cleanup(batch)
        complete(batch)
    except BatchError as exc:
        fail(batch, str(exc))


#: Sheet flags that collecting_results adds (and so may take away on a re-run).
COLLECT_FLAGS = frozenset({"duplicate_page", "missing_page"})


def collect_results(batch: Batch) -> None:
    """collecting_results: group the pages by what their QR codes (or number
    grids) said, and flag what does not add up: the same page of one student
    twice, pages of a multi-page sheet missing, a QR code naming another
    template than the batch's when the batch has no QR codes."""
    if _past(batch, Stage.COLLECTING_RESULTS):
        return
    progress.publish(batch, Stage.COLLECTING_RESULTS, f"Collecting results of {batch.sheets_total} sheets",
                     progress=0)
    # The readings themselves are not loaded: their flags and doubt were kept
    # on the sheet rows when they were stored.
    sheets = list(Sheet.objects.filter(batch=batch).only(
        "pk", "status", "template", "template_page", "student", "exam", "needs_review", "engine_review", "flags",
        "error"))
    before = {s.pk: (list(s.flags), s.needs_review) for s in sheets}
    groups: dict[tuple, list[Sheet]] = defaultdict(list)
    for s in sheets:
        s.flags = [f for f in s.flags if f not in COLLECT_FLAGS]
        if s.status == SheetStatus.DONE and s.student:
            groups[(s.template, s.exam, s.student)].append(s)
    for (template_name, _exam, _student), members in groups.items():
        by_page: dict[int, list[Sheet]] = defaultdict(list)
        for s in members:
            by_page[s.template_page or 1].append(s)
        for same in by_page.values():
            if len(same) > 1:
                for s in same:
                    s.flags.append("duplicate_page")
        try:
            pages = _template(template_name).pages if template_name else 1
        except (FileNotFoundError, ValueError):
            pages = 1
        if pages > 1 and set(by_page) != set(range(1, pages + 1)):
            for s in members:
                s.flags.append("missing_page")
    review = 0
    changed: dict[tuple, list[int]] = defaultdict(list)
    for s in sheets:
        s.needs_review = bool(s.error or s.status == SheetStatus.FAILED or s.flags or s.engine_review)
        review += s.needs_review
        if (s.flags, s.needs_review) != before[s.pk]:
            changed[(tuple(s.flags), s.needs_review)].append(s.pk)
    # Most sheets keep their values: only the changed ones are written, one
    # UPDATE per distinct outcome (bulk_update's CASE over every sheet of a
    # large batch took longer than the rest of this stage).
    for (flags, needs_review), pks in changed.items():
        for i in range(0, len(pks), 1000):
            Sheet.objects.filter(pk__in=pks[i:i + 1000]).update(flags=list(flags), needs_review=needs_review)
    Batch.objects.filter(pk=batch.pk).update(sheets_needs_review=review)
    students = len(groups)
    progress.publish(batch, Stage.COLLECTING_RESULTS,
                     f"Collected {len(sheets)} results: {students} students, {review} sheets need review",
                     progress=100)


def csv_name(batch: Batch) -> str:
    return f"{batch.storage_prefix}results.csv"


def generate_csv(batch: Batch) -> None:
    """generating_csv: the results file, one row per sheet (see ``csvexport``)."""
    if _past(batch, Stage.GENERATING_CSV):
        return
    progress.publish(batch, Stage.GENERATING_CSV, "Generating the results CSV")
    buffer = io.StringIO(newline="")
    rows = csvexport.write_results_csv(batch, buffer)
    name = _save(csv_name(batch), buffer.getvalue().encode("utf-8-sig"))
    Batch.objects.filter(pk=batch.pk).update(results_csv=name)
    batch.results_csv.name = name
    progress.publish(batch, Stage.GENERATING_CSV, f"CSV generation complete: {rows} sheets", progress=100)


def load_database(batch: Batch) -> None:
    """loading_database: the answer rows were stored chunk by chunk as the sheets
    were read; this checks that every read sheet has them (re-creating any that
    are missing from the stored reading) and sets the batch's counts from the
    rows themselves, the source of truth."""
    if _past(batch, Stage.LOADING_DATABASE):
        return
    progress.publish(batch, Stage.LOADING_DATABASE, "Loading results into the database")
    # NOT EXISTS, not a count per sheet: grouping the sheets by their columns,
    # the readings among them, took 0.12 s for 500 sheets.
    missing = list(Sheet.objects.filter(batch=batch, status=SheetStatus.DONE, reading__isnull=False)
                   .filter(~Exists(Answer.objects.filter(sheet=OuterRef("pk")))).only("pk", "reading"))
    repaired = [row for s in missing for row in result_from_reading(s.pk, s.reading, batch).rows]
    insert_answers(repaired)
    stats = Sheet.objects.filter(batch=batch).aggregate(
        total=Count("pk"),
        processed=Count("pk", filter=Q(status__in=[SheetStatus.DONE, SheetStatus.FAILED])),
        failed=Count("pk", filter=Q(status=SheetStatus.FAILED)),
        review=Count("pk", filter=Q(needs_review=True)),
    )
    Batch.objects.filter(pk=batch.pk).update(sheets_total=stats["total"], sheets_processed=stats["processed"],
                                             sheets_failed=stats["failed"], sheets_needs_review=stats["review"])
    answers = Answer.objects.filter(sheet__batch=batch).count()
    progress.publish(batch, Stage.LOADING_DATABASE,
                     f"Database load complete: {stats['total']} sheets, {answers} answers", progress=100)


def cleanup(batch: Batch) -> None:
    """cleanup: remove the batch's working files. The upload, the page images
    (reviewers look at them) and the CSV stay until the batch is deleted."""
    if _past(batch, Stage.CLEANUP):
        return
    progress.publish(batch, Stage.CLEANUP, "Cleaning up working files")
    delete_prefix(f"{batch.storage_prefix}work/")
    progress.publish(batch, Stage.CLEANUP, "Cleanup complete", progress=100)


def complete(batch: Batch) -> None:
    batch.refresh_from_db(fields=["sheets_total", "sheets_failed", "sheets_needs_review"])
    read = batch.sheets_total - batch.sheets_failed
    progress.publish(batch, Stage.COMPLETED,
                     f"Batch completed: {read} of {batch.sheets_total} sheets read, "
                     f"{batch.sheets_needs_review} need review, {batch.sheets_failed} failed", progress=100)


# ---------------------------------------------------------------- in-process run


def run_inline(batch_id, on_chunk=None) -> Batch:
    """Run the whole pipeline in this process (``manage.py process_batch``, tests).
    ``on_chunk(batch)`` is called after each chunk of sheets."""
    try:
        chunks = start_batch(batch_id)
        for chunk in chunks:
            moved_on = process_chunk(batch_id, chunk)
            if on_chunk:
                on_chunk(Batch.objects.get(pk=batch_id))
            if moved_on:
                finish_batch(batch_id)
    except Exception as exc:
        logger.exception("Batch %s stopped", batch_id)
        fail(batch_id, f"internal error ({type(exc).__name__}: {exc})")
    return Batch.objects.get(pk=batch_id)

