"""Accepting a batch, running a failed one again, deleting one: the write
actions on a whole batch, shared by the API, the browser pages, resumable
uploads and commands.

Views parse the request and call these; these check the rules and raise
``ServiceError`` with an HTTP status and a plain message.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.conf import settings
from django.core.files.base import File
from django.db import transaction
from django.utils import timezone

from .. import lifecycle, sheet_templates
from ..display import display_name, size_text
from ..exams.models import Exam
from ..exams.services import exams_for
from ..models import Batch, Stage
from ..omr import text
from ..pipeline import fanout, tasks
from ..pipeline.extract import ExtractError, upload_extension
from ..storage import delete_prefix, make_durable

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_bool(value, default: bool = True) -> bool:
    """Form booleans: true/false, 1/0, yes/no, on/off; raises ServiceError."""
    if value is None or value == "":
        return default
    word = str(value).strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off"}:
        return False
    raise ServiceError(400, f"has_qr must be true or false, not {display_name(str(value), 20)!r}")


def check_template(name: str) -> str:
    """The template name (a built-in one or one uploaded in the admin), checked
    to exist and parse; raises ServiceError 400."""
    name = (name or settings.OMR_DEFAULT_TEMPLATE).strip()
    known = sheet_templates.names()
    if name not in known:
        raise ServiceError(400, f"unknown template {display_name(name, 64)!r}; choose one of {', '.join(known)}")
    try:
        sheet_templates.resolve(name)
    except (FileNotFoundError, ValueError) as exc:
        raise ServiceError(400, f"template {name!r} cannot be used: {exc}") from None
    return name


def upload_limit_text() -> str:
    """The upload size limit as a user reads it, with the setting that sets it."""
    return f"{size_text(settings.OMR_MAX_UPLOAD_BYTES)} (OMR_MAX_UPLOAD_MB)"


def check_new_batch(filename: str, template: str, size: int) -> tuple[str, str]:
    """The checked template name and file extension for a new batch of
    ``size`` bytes; raises ``ServiceError`` (400 bad template, file type or an
    empty file, 413 too large)."""
    template = check_template(template)
    try:
        text.check(filename, f"the file name {display_name(filename)!r}")
    except text.TextError as exc:
        raise ServiceError(400, str(exc)) from None
    try:
        extension = upload_extension(filename)
    except ExtractError as exc:
        raise ServiceError(400, str(exc)) from None
    if size > settings.OMR_MAX_UPLOAD_BYTES:
        raise ServiceError(413, f"{display_name(filename)} is {size_text(size)}, over the limit of "
                                f"{upload_limit_text()}")
    if size == 0:
        raise ServiceError(400, f"{display_name(filename)} is empty")
    return template, extension


def begin_batch(owner, *, filename: str, template: str = "", has_qr: bool = True, size: int, exam=None) -> Batch:
    """A new batch in stage ``uploading`` whose file is still to come (see
    ``store_upload``): checked as ``check_new_batch`` does, with its first event.
    Call it inside a transaction with ``store_upload``, or alone for a
    resumable upload that gives the batch its file when the last byte is in."""
    template, extension = check_new_batch(filename, template, size)
    with transaction.atomic():
        batch = Batch.objects.create(owner=owner, template=template, has_qr=has_qr, extension=extension,
                                     original_filename=filename[:255], size=size, stage=Stage.UPLOADING, exam=exam)
        lifecycle.advance(batch, Stage.UPLOADING, f"Receiving {display_name(filename)}")
    return batch


def store_upload(batch: Batch, upload, *, sha256: str, start: bool = True) -> Batch:
    """Give a batch made by ``begin_batch`` its file (a Django ``File`` of
    ``batch.size`` bytes whose SHA-256 is ``sha256``) and queue its pipeline
    once the transaction commits (``start=False`` leaves it to the caller)."""
    with transaction.atomic():
        # An UploadedFile is passed as it is: a large one spooled to a temporary
        # file is then moved into storage, not copied.
        batch.upload.save("original" + batch.extension, upload if isinstance(upload, File) else File(upload),
                          save=False)
        make_durable(batch.upload.name)
        batch.sha256 = sha256
        Batch.objects.filter(pk=batch.pk).update(upload=batch.upload.name, sha256=sha256)
        lifecycle.advance(batch, Stage.UPLOADING,
                          f"Upload complete: {display_name(batch.original_filename)}, {batch.size / 1e6:.1f} MB",
                          progress=100)
        if start:
            tasks.enqueue_batch(batch.pk)
    return batch


def create_batch(owner, upload, *, filename: str | None = None, template: str = "", has_qr: bool = True,
                 start: bool = True, exam=None) -> Batch:
    """Store an uploaded file as a new batch and queue its pipeline.

    ``upload`` is a Django ``File`` (an ``UploadedFile`` from a form, or a file
    opened by a command). The pipeline starts once the transaction commits
    (``start=False`` leaves it to the caller). Raises ``ServiceError`` (400 bad
    template or file type, 413 too large).
    """
    filename = filename or getattr(upload, "name", "") or "upload"
    size = upload.size
    check_new_batch(filename, template, size)
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    with transaction.atomic():
        batch = begin_batch(owner, filename=filename, template=template, has_qr=has_qr, size=size, exam=exam)
        store_upload(batch, upload, sha256=digest.hexdigest(), start=start)
    logger.info("Batch %s created from %s (%d bytes)", batch.pk, display_name(filename), size)
    return batch


def retry_batch(batch: Batch) -> Batch:
    """Run a failed batch again from the start, or read again the sheets of a
    completed batch that the server failed by its own trouble (and then
    regenerate its results); raises ServiceError 409 otherwise. The stages
    overwrite their own rows, so nothing is doubled."""
    with transaction.atomic():
        if batch.stage == Stage.COMPLETED:
            ids = fanout.server_failures(batch.pk)
            if not ids:
                raise ServiceError(409, "this batch has no sheets that the server failed to read; nothing to retry")
            if lifecycle.reopen(batch, f"Retry requested: reading again the {len(ids)} sheets the server "
                                       "could not read or store") is None:
                raise ServiceError(409, f"only a failed or completed batch can be retried; this one is {batch.stage}")
            tasks.send_chunks(str(batch.pk), fanout.reset_sheets(batch.pk, ids))
        elif lifecycle.retry(batch, "Retry requested: the batch runs again from the start") is None:
            raise ServiceError(409, f"only a failed batch can be retried; this one is {batch.stage}")
        else:
            tasks.enqueue_batch(batch.pk)
    batch.refresh_from_db()
    return batch


def delete_batch(batch: Batch) -> None:
    """Delete a batch, its rows and every file under its storage folder.
    A worker still busy with it finds it gone and stops."""
    prefix = batch.storage_prefix
    batch.delete()
    delete_prefix(prefix)
    logger.info("Batch %s deleted at %s", batch.pk, timezone.now().isoformat())


def exam_for_upload(user, exam_id: Any, template: str = "") -> tuple[Exam | None, str]:
    """The exam a new batch is uploaded for (``exam=`` of ``POST
    /api/batches/upload`` and of the tus metadata) and the batch's template:
    the exam's when none is given. Raises ``ServiceError`` 400 for an
    exam that is not the user's (as if it did not exist) or a template that
    is not the exam's."""
    text = str(exam_id).strip() if exam_id is not None else ""
    if not text:
        return None, template
    try:
        exam = exams_for(user).get(pk=int(text))
    except (Exam.DoesNotExist, ValueError):
        raise ServiceError(400, f"exam: no exam {text[:20]!r}") from None
    template = (template or "").strip()
    if template and template != exam.template:
        raise ServiceError(400, f"template: the exam {exam.name!r} is on template {exam.template}, not {template}")
    return exam, exam.template
