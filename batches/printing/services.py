"""Print runs: which sheets an exam's print holds, building the PDF, and the
jobs a worker builds for prints too large for a request.

Views call these; errors are ``PrintError`` with an HTTP status and a plain
message. The engine draws the pages (``omr.render.render_sheets_pdf``).
"""

from __future__ import annotations

import datetime
import io
import logging
import re
import time
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from .. import sheet_templates, storage
from ..exams.models import Exam, RosterEntry
from ..omr.render import PrintedSheet, render_sheets_pdf
from ..omr.template import Template
from .models import PrintJob, PrintState

logger = logging.getLogger(__name__)

ORDER_GROUP = "group"
ORDER_IMPORTED = "imported"
ORDERS = {ORDER_GROUP: "By group, then name", ORDER_IMPORTED: "As imported"}
MAX_BLANKS = 1000  # blank sheets in one print (walk-ins, or a template's stock)
PROGRESS_EVERY = 0.5  # seconds between the worker's progress writes


class PrintError(Exception):
    """A print that cannot be made: ``status`` (400, 404) and a plain message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PrintPlan:
    """What one print holds: the template, the sheets in order, and the name
    the PDF is offered under."""

    template: Template
    sheets: list[PrintedSheet]
    filename: str

    @property
    def pages(self) -> int:
        return len(self.sheets) * self.template.pages


def printable_template(name: str) -> Template:
    """The engine template ``name`` is printed with; ``PrintError`` 404 when
    there is none, 400 for an OMRChecker template (its sheets are printed from
    its own files) or a stored one that no longer parses."""
    try:
        resolved = sheet_templates.resolve(name)
    except FileNotFoundError:
        raise PrintError(404, f"no sheet template {name!r}") from None
    except ValueError as exc:
        raise PrintError(400, f"the template {name!r} cannot be used: {exc}") from None
    if resolved.is_omrchecker:
        raise PrintError(400, f"{name!r} is an OMRChecker template: print its sheets from its own files")
    return resolved.template


def student_label(entry: RosterEntry) -> str:
    """What is printed on a student's pages: ``Name (number, group 2B)``."""
    details = entry.student_number + (f", group {entry.group}" if entry.group else "")
    return f"{entry.name} ({details})"


def roster_entries(exam: Exam, order: str) -> list[RosterEntry]:
    """The exam's roster by group then name (``group``) or as imported (``imported``)."""
    entries = list(RosterEntry.objects.filter(exam=exam).order_by("pk"))
    if order == ORDER_GROUP:
        entries.sort(key=lambda e: (e.group.casefold(), e.name.casefold(), e.student_number))
    elif order != ORDER_IMPORTED:
        raise PrintError(400, f"unknown order {order!r}: choose {' or '.join(ORDERS)}")
    return entries


def check_blanks(blanks: int) -> int:
    if not 0 <= blanks <= MAX_BLANKS:
        raise PrintError(400, f"blank sheets: {blanks} is not between 0 and {MAX_BLANKS}")
    return blanks


def exam_plan(exam: Exam, *, roster: bool = True, order: str = ORDER_GROUP, blanks: int = 0) -> PrintPlan:
    """An exam's print: a sheet per roster student (``roster``), in ``order``,
    then ``blanks`` blank sheets for walk-ins (exam in the QR code, no student)."""
    template = printable_template(exam.template)
    exam_ref = str(exam.pk)
    sheets = []
    if roster:
        sheets = [PrintedSheet(exam_ref, e.student_number, student_label(e)) for e in roster_entries(exam, order)]
    sheets += [PrintedSheet(exam_ref)] * check_blanks(blanks)
    if not sheets:
        raise PrintError(400, "nothing to print: the roster is empty and no blank sheets were asked for"
                         if roster else "nothing to print: ask for the roster or some blank sheets")
    kind = ("roster" + (f"-and-{blanks}-blank" if blanks else "")) if roster else f"{blanks}-blank"
    return PrintPlan(template, sheets, f"{_slug(exam.name)}-{kind}.pdf")


def blank_plan(template_name: str, count: int) -> PrintPlan:
    """``count`` blank sheets of any template, for no exam."""
    template = printable_template(template_name)
    if count < 1 or count > MAX_BLANKS:
        raise PrintError(400, f"blank sheets: {count} is not between 1 and {MAX_BLANKS}")
    return PrintPlan(template, [PrintedSheet()] * count, f"{template.name}-{count}-blank.pdf")


def write_pdf(plan: PrintPlan, out: BinaryIO, progress=None) -> int:
    """Write the plan's PDF to ``out``; returns its pages."""
    return render_sheets_pdf(plan.template, plan.sheets, out, progress=progress, title=plan.filename[:-4])


def pdf_bytes(plan: PrintPlan) -> bytes:
    buf = io.BytesIO()
    write_pdf(plan, buf)
    return buf.getvalue()


def fits_in_request(plan: PrintPlan) -> bool:
    """Small prints are built while the browser waits; larger ones in a worker."""
    return plan.pages <= settings.OMR_PRINT_IN_REQUEST_PAGES


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "exam"


# ---------------------------------------------------------------- jobs


def jobs_for(user):
    """The print jobs ``user`` may see: their own; all for superusers."""
    return PrintJob.objects.all() if user.is_superuser else PrintJob.objects.filter(owner=user)


def get_job_or_404(user, job_id, exam: Exam | None = None) -> PrintJob:
    jobs = jobs_for(user)
    if exam is not None:
        jobs = jobs.filter(exam=exam)
    try:
        return jobs.get(pk=job_id)
    except (PrintJob.DoesNotExist, ValueError):
        raise Http404("no such print") from None


def start_exam_job(user, exam: Exam, plan: PrintPlan, options: dict) -> PrintJob:
    """A job for the worker to build ``plan`` (made again from ``options``
    there, so the roster printed is the roster when it runs); sent once the
    transaction commits."""
    from .tasks import build_print

    now = timezone.now()
    job = PrintJob.objects.create(owner=user, exam=exam, template=exam.template, options=options,
                                  sheets_total=len(plan.sheets), filename=plan.filename, created_at=now,
                                  expires_at=now + _expiry())
    job_id = str(job.pk)
    transaction.on_commit(lambda: build_print.send(job_id))
    return job


def job_storage_name(job: PrintJob) -> str:
    """Under the exam's folder: ``exams/<exam id>/prints/<job id>.pdf``."""
    return f"exams/{job.exam_id}/prints/{job.pk}.pdf"


def run_job(job_id: str) -> None:
    """Build a job's PDF (the actor's work): progress written every
    ``PROGRESS_EVERY`` seconds, the file stored, the job done; a job already
    finished is left alone, so a second delivery does no harm."""
    job = PrintJob.objects.select_related("exam").filter(pk=job_id).first()
    if job is None or job.is_finished:
        return
    options = job.options
    try:
        plan = exam_plan(job.exam, roster=options.get("roster", True), order=options.get("order", ORDER_GROUP),
                         blanks=int(options.get("blanks", 0)))
    except PrintError as exc:
        fail_job(job_id, exc.message)
        return
    started = timezone.now()
    PrintJob.objects.filter(pk=job_id).update(state=PrintState.RUNNING, started_at=started,
                                              sheets_total=len(plan.sheets), sheets_done=0)
    last = time.monotonic()

    def progress(done: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            PrintJob.objects.filter(pk=job_id).update(sheets_done=done)

    buf = io.BytesIO()
    pages = write_pdf(plan, buf, progress)
    name = storage.save(job_storage_name(job), buf.getvalue())
    finished = timezone.now()
    PrintJob.objects.filter(pk=job_id).update(state=PrintState.DONE, sheets_done=len(plan.sheets), pages=pages,
                                              file=name, size=buf.tell(), finished_at=finished,
                                              expires_at=finished + _expiry())
    logger.info("Print %s built: %d sheets, %d pages, %d bytes in %.1f s", job_id, len(plan.sheets), pages,
                buf.tell(), (finished - started).total_seconds())


def fail_job(job_id: str, reason: str) -> None:
    PrintJob.objects.filter(pk=job_id).exclude(state=PrintState.DONE).update(
        state=PrintState.FAILED, error=reason, finished_at=timezone.now())


def delete_job(job: PrintJob) -> None:
    """A job and its PDF."""
    if job.file:
        from django.core.files.storage import default_storage

        default_storage.delete(job.file)
    job.delete()


def _expiry() -> datetime.timedelta:
    return datetime.timedelta(hours=settings.OMR_PRINT_EXPIRY_HOURS)
