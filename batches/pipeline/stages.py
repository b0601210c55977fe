"""The batch pipeline: the only place that runs the stages, in order.

Stages (docs/contracts.md): validating, extracting, organizing_qr, creating_sheets,
processing_sheets, collecting_results, generating_csv, loading_database,
cleanup, then completed or failed. Three entry points, each called by a thin
actor in ``tasks.py`` (or inline by ``manage.py process_batch``):

- ``start_batch``: the stages up to creating_sheets, then opens
  processing_sheets and returns the chunks of sheet ids to fan out.
- ``fanout.process_chunk``: reads a few sheets and stores their results in
  one transaction; the call that stores the last sheet moves the batch on (a
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
import threading
import time
import uuid
from collections import defaultdict, deque

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, OuterRef

from .. import csvexport, lifecycle, sheet_templates
from ..display import display_name
from ..exams import scores as exam_scores
from ..models import Answer, Batch, Sheet, SheetStatus, Stage, sheet_needs_review, stage_index
from ..omr.flags import CROSS_SHEET, Flag
from ..storage import delete_prefix, manifest_name, pages_prefix, save, work_folder
from . import claims, fanout
from .bulk import insert_answers
from .extract import ExtractError, Limits, check_archive, iter_pages, sniff
from .reading import result_from_reading

logger = logging.getLogger(__name__)


class BatchError(Exception):
    """A problem with the upload itself: the batch fails with this plain message."""


class BatchGone(Exception):
    """The batch was deleted (or finished) while a stage ran: stop quietly."""


# ---------------------------------------------------------------- helpers


def _past(batch: Batch, stage: str) -> bool:
    """True when ``batch`` has already finished ``stage``."""
    return stage_index(batch.stage) > stage_index(stage)



# ---------------------------------------------------------------- start: validating .. creating_sheets


def start_batch(batch_id, token: str | None = None) -> list[list[int]]:
    """Run validating, extracting, organizing_qr and creating_sheets, then open
    processing_sheets. Returns the chunks of sheet ids to read (empty when the
    batch is gone, finished, already dispatched, held by another message, or
    failed here).

    ``token`` names this run (the Dramatiq message id): the batch is claimed for
    it first, so a second message for the same batch (a duplicate, or one the
    recovery job sent) never extracts and creates the sheets a second time
    while this one runs."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.is_finished or _past(batch, Stage.PROCESSING_SHEETS):
        return []
    if batch.stage == Stage.PROCESSING_SHEETS:
        # This message came back after its worker stopped while sending the
        # chunks: the sheets nobody has taken yet are sent again (a chunk
        # delivered twice is claimed once).
        chunks = pending_chunks(batch)
        logger.info("Batch %s: %d chunks of untaken sheets sent again", batch.pk, len(chunks))
        return chunks
    if not claims.claim_run(batch, token or uuid.uuid4().hex):
        logger.info("Batch %s is being started by another message", batch_id)
        return []
    try:
        for stage in (validate, extract, organize_qr, create_sheets):
            stage(batch)
            _hold(batch)
        chunks = open_processing(batch)
        claims.release_run(batch)
        return chunks
    except BatchError as exc:
        lifecycle.fail(batch, str(exc))
        return []
    except BatchGone:
        return []


def _hold(batch: Batch) -> None:
    """Renew this run's claim on the batch; stop when another run took it over."""
    if not claims.renew_run(batch):
        raise BatchGone()


def validate(batch: Batch) -> None:
    """validating: the stored upload is whole, of a supported kind, and (for a
    ZIP) every entry passes the archive checks before anything is extracted."""
    if _past(batch, Stage.VALIDATING):
        return
    shown = display_name(batch.original_filename)
    lifecycle.advance(batch, Stage.VALIDATING, f"Checking {shown}")
    try:
        sheet_templates.resolve(batch.template)
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
            raise BatchError(f"{shown} is empty")
        kind = sniff(head)
        message = f"{shown} is a valid upload"
        if batch.extension == ".zip":
            if kind != "zip":
                raise BatchError(f"{shown} is not a ZIP archive")
            f.seek(0)
            try:
                plan = check_archive(f, batch.original_filename, Limits.from_settings())
            except ExtractError as exc:
                raise BatchError(str(exc)) from None
            if not plan.members:
                raise BatchError("the archive holds no images or PDF files")
            message = f"Archive is valid: {len(plan.members)} image/PDF files"
            if plan.skipped:
                message += ", " + _skipped_words(plan.skipped)
        elif batch.extension == ".pdf" and kind != "pdf":
            raise BatchError(f"{shown} is not a PDF file")
        elif kind in {"zip", "gzip", "7z", "rar"}:
            raise BatchError(f"{shown} is an archive; upload it as .zip")
    lifecycle.advance(batch, Stage.VALIDATING, message, progress=100)


#: At most this many skipped files are named in the validation message.
SKIPPED_NAMED = 3


def _skipped_words(skipped: list[str]) -> str:
    """``1 other file skipped (template.json)``: the files of an archive
    that are not read, named (a few), so one put there by mistake is seen."""
    names = ", ".join(display_name(n) for n in skipped[:SKIPPED_NAMED])
    more = f" and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
    files = "file" if len(skipped) == 1 else "files"
    return f"{len(skipped)} other {files} skipped ({names}{more})"


def extract(batch: Batch) -> None:
    """extracting: every page of the upload stored as its own image file, and a
    manifest listing them in file order. Partial output is removed on failure."""
    if _past(batch, Stage.EXTRACTING):
        return
    lifecycle.advance(batch, Stage.EXTRACTING, f"Extracting pages from {display_name(batch.original_filename)}")
    prefix = pages_prefix(batch)
    delete_prefix(prefix)
    manifest = []
    last_event = time.monotonic()
    try:
        with default_storage.open(batch.upload.name, "rb") as f, _PageWriter() as writer:
            for page in iter_pages(f, batch.original_filename, Limits.from_settings(), work_folder(batch)):
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
                    if lifecycle.advance(batch, Stage.EXTRACTING, f"Extracted {index} pages", progress=50) is None:
                        raise BatchGone()  # deleted (or failed) meanwhile: stop writing its files
                    _hold(batch)
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
    save(manifest_name(batch), json.dumps(manifest).encode())
    sources = len({m["source"] for m in manifest})
    lifecycle.advance(batch, Stage.EXTRACTING, f"Extraction complete: {len(manifest)} pages from {sources} files",
                      progress=100)


class _PageWriter:
    """Stores extracted pages on a thread beside the reading of the archive.

    Reading a member (with its CRC check) and writing the page each cost about
    as much, and both let go of the GIL, so the two overlap: extraction, a
    stage the whole batch waits for on one core, takes about half as long. At
    most ``ahead`` pages wait in memory. ``save`` fills ``entry["image"]`` once
    the page is stored; leaving the block waits for every page, and raises the
    first storage error (after the rest have stopped). Once one page could not
    be stored (a full disk), the pages queued behind it are not attempted: the
    writer would only fill the disk again while the reader catches up."""

    def __init__(self, ahead: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omr-extract-write")
        self._pending: deque = deque()
        self._ahead = ahead
        self._failed = threading.Event()

    def save(self, entry: dict, name: str, data: bytes) -> None:
        self._pending.append((entry, self._pool.submit(self._store, name, data)))
        while len(self._pending) > self._ahead:
            self._finish_one()

    def _store(self, name: str, data: bytes) -> str:
        if self._failed.is_set():
            raise OSError("not stored: an earlier page could not be")
        try:
            return save(name, data)
        except BaseException:
            self._failed.set()
            raise

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
    lifecycle.advance(batch, Stage.ORGANIZING_QR, "Planning the reading order")
    count = len(_manifest(batch))
    if sheet_templates.reads_qr(batch.template, batch.has_qr):
        message = f"{count} pages in file order; each page's QR code is read with its answers"
    else:
        message = f"{count} pages in file order, read as {batch.template}; {_students_by(batch.template)}"
    lifecycle.advance(batch, Stage.ORGANIZING_QR, message, progress=100)


def _students_by(template: str) -> str:
    """How the pages of a batch read without QR codes are matched to students."""
    from ..exams.templates import exam_template

    try:
        field = exam_template(template).student_field
    except (FileNotFoundError, ValueError):
        field = None  # (the reading reports the template's trouble)
    if field is None:
        return "the template has no student number field: sheets are not matched to students"
    return f"students found by their number grid ({field})"


def create_sheets(batch: Batch) -> None:
    """creating_sheets: one ``Sheet`` row per page (replacing any earlier ones)."""
    if _past(batch, Stage.CREATING_SHEETS):
        return
    lifecycle.advance(batch, Stage.CREATING_SHEETS, "Creating sheet records")
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
    lifecycle.advance(batch, Stage.CREATING_SHEETS, f"Created {len(manifest)} sheets", progress=100)

def pending_chunks(batch: Batch) -> list[list[int]]:
    """The chunks of the sheets no worker has taken yet."""
    return fanout.split_chunks(list(Sheet.objects.filter(batch=batch, status=SheetStatus.PENDING).order_by("index")
                                    .values_list("pk", flat=True)))


def open_processing(batch: Batch) -> list[list[int]]:
    """processing_sheets starts: returns the chunks of pending sheet ids."""
    chunks = pending_chunks(batch)
    lifecycle.advance(batch, Stage.PROCESSING_SHEETS,
                      f"Dispatching {sum(map(len, chunks))} sheets to the workers in {len(chunks)} chunks")
    return chunks


# ---------------------------------------------------------------- processing_sheets (fan-out)


# ---------------------------------------------------------------- finish: collecting_results .. completed


def finish_batch(batch_id, token: str | None = None) -> None:
    """collecting_results, generating_csv, loading_database, cleanup, completed.
    Claimed for ``token`` as ``start_batch`` is: two finish messages never run
    the same stages at once."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.is_finished or stage_index(batch.stage) < stage_index(Stage.COLLECTING_RESULTS):
        return
    if not claims.claim_run(batch, token or uuid.uuid4().hex):
        logger.info("Batch %s is being finished by another message", batch_id)
        return
    try:
        for stage in (collect_results, generate_csv, load_database, exam_scores.score_finished_batch, cleanup):
            stage(batch)
            _hold(batch)
        complete(batch)
        claims.release_run(batch)
    except BatchError as exc:
        lifecycle.fail(batch, str(exc))
    except BatchGone:
        return




def collect_results(batch: Batch) -> None:
    """collecting_results: group the pages by what their QR codes (or number
    grids) said, and flag what does not add up: the same page of one student
    twice, pages of a multi-page sheet missing, a QR code naming another
    template than the batch's when the batch has no QR codes."""
    if _past(batch, Stage.COLLECTING_RESULTS):
        return
    lifecycle.advance(batch, Stage.COLLECTING_RESULTS, f"Collecting results of {batch.sheets_total} sheets",
                      progress=0)
    # The readings themselves are not loaded: their flags and doubt were kept
    # on the sheet rows when they were stored.
    sheets = list(Sheet.objects.filter(batch=batch).only(
        "pk", "status", "template", "template_page", "student", "exam", "needs_review", "engine_review", "flags",
        "error"))
    before = {s.pk: (list(s.flags), s.needs_review) for s in sheets}
    groups: dict[tuple, list[Sheet]] = defaultdict(list)
    for s in sheets:
        # The flags this stage adds, taken away first on a re-run.
        s.flags = [f for f in s.flags if f not in CROSS_SHEET]
        if s.status == SheetStatus.DONE and s.student:
            groups[(s.template, s.exam, s.student)].append(s)
    for (template_name, _exam, _student), members in groups.items():
        by_page: dict[int, list[Sheet]] = defaultdict(list)
        for s in members:
            by_page[s.template_page or 1].append(s)
        for same in by_page.values():
            if len(same) > 1:
                for s in same:
                    s.flags.append(Flag.DUPLICATE_PAGE)
        try:
            pages = sheet_templates.resolve(template_name).pages if template_name else 1
        except (FileNotFoundError, ValueError):
            pages = 1
        if pages > 1 and set(by_page) != set(range(1, pages + 1)):
            for s in members:
                s.flags.append(Flag.MISSING_PAGE)
    review = 0
    changed: dict[tuple, list[int]] = defaultdict(list)
    for s in sheets:
        s.needs_review = sheet_needs_review(status=s.status, error=s.error, flags=s.flags, engine_review=s.engine_review)
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
    lifecycle.advance(batch, Stage.COLLECTING_RESULTS,
                      f"Collected {len(sheets)} results: {students} students, {review} sheets need review",
                      progress=100)


def generate_csv(batch: Batch) -> None:
    """generating_csv: the results file, one row per sheet (see ``csvexport``)."""
    if _past(batch, Stage.GENERATING_CSV):
        return
    lifecycle.advance(batch, Stage.GENERATING_CSV, "Generating the results CSV")
    rows = csvexport.save_results_csv(batch)
    lifecycle.advance(batch, Stage.GENERATING_CSV, f"CSV generation complete: {rows} sheets", progress=100)


def load_database(batch: Batch) -> None:
    """loading_database: the answer rows were stored chunk by chunk as the sheets
    were read; this checks that every read sheet has them (re-creating any that
    are missing from the stored reading) and sets the batch's counts from the
    rows themselves, the source of truth."""
    if _past(batch, Stage.LOADING_DATABASE):
        return
    lifecycle.advance(batch, Stage.LOADING_DATABASE, "Loading results into the database")
    # NOT EXISTS, not a count per sheet: grouping the sheets by their columns,
    # the readings among them, took 0.12 s for 500 sheets.
    missing = list(Sheet.objects.filter(batch=batch, status=SheetStatus.DONE, reading__isnull=False)
                   .filter(~Exists(Answer.objects.filter(sheet=OuterRef("pk")))).only("pk", "reading"))
    repaired = [row for s in missing for row in result_from_reading(s.pk, s.reading, batch).rows]
    insert_answers(repaired)
    stats = Batch.objects.recount_sheets(batch.pk)
    answers = Answer.objects.filter(sheet__batch=batch).count()
    lifecycle.advance(batch, Stage.LOADING_DATABASE,
                      f"Database load complete: {stats['total']} sheets, {answers} answers", progress=100)


def cleanup(batch: Batch) -> None:
    """cleanup: remove the batch's working files. The upload, the page images
    (reviewers look at them) and the CSV stay until the batch is deleted."""
    if _past(batch, Stage.CLEANUP):
        return
    lifecycle.advance(batch, Stage.CLEANUP, "Cleaning up working files")
    delete_prefix(f"{batch.storage_prefix}work/")
    lifecycle.advance(batch, Stage.CLEANUP, "Cleanup complete", progress=100)


def complete(batch: Batch) -> None:
    batch.refresh_from_db(fields=["sheets_total", "sheets_failed", "sheets_needs_review"])
    read = batch.sheets_total - batch.sheets_failed
    lifecycle.complete(batch,
                     f"Batch completed: {read} of {batch.sheets_total} sheets read, "
                       f"{batch.sheets_needs_review} need review, {batch.sheets_failed} failed")


# ---------------------------------------------------------------- in-process run


def run_inline(batch_id, on_chunk=None) -> Batch:
    """Run the whole pipeline in this process (``manage.py process_batch``, tests).
    ``on_chunk(batch)`` is called after each chunk of sheets."""
    try:
        chunks = start_batch(batch_id)
        for chunk in chunks:
            moved_on = fanout.process_chunk(batch_id, chunk)
            if on_chunk:
                on_chunk(Batch.objects.get(pk=batch_id))
            if moved_on:
                finish_batch(batch_id)
    except Exception as exc:
        logger.exception("Batch %s stopped", batch_id)
        lifecycle.fail(batch_id, f"internal error ({type(exc).__name__}: {exc})")
    return Batch.objects.get(pk=batch_id)

