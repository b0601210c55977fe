"""Reading one sheet: the engine's reading of a stored page, and the values
its sheet row and answer rows take from it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from django.conf import settings

from .. import sheet_templates
from ..models import Answer, Batch, Sheet, SheetStatus
from . import watchdog
from .extract import damaged_page_reason

logger = logging.getLogger(__name__)


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
    from ..omr.reader import read_image_bytes

    try:
        data = sheet.read_image()
    except OSError as exc:
        return SheetResult(sheet.pk, SheetStatus.FAILED, error=f"page image missing ({exc.strerror or exc})")
    if (damaged := damaged_page_reason(sheet.image, data)) is not None:
        return failed_result(sheet.pk, damaged)
    chosen = sheet_templates.resolve(batch.template)
    try:
        with watchdog.page_time_limit(settings.OMR_SHEET_TIME_LIMIT, f"Reading page {sheet.index} of batch {batch.pk}"):
            if chosen.is_omrchecker:
                # OMRChecker sheets carry no QR code: always the batch's template.
                from ..omr.omrchecker import read_omrchecker_image_bytes

                readings = read_omrchecker_image_bytes(data, chosen.template, source=sheet.source_name,
                                                       max_pixels=settings.OMR_MAX_PIXELS)
            else:
                template = None if batch.has_qr else chosen.template
                readings = read_image_bytes(data, template, source=sheet.source_name, resolve=sheet_templates.resolve_for_qr,
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
        from ..omr.payload import QrPayload

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


def failed_result(sheet_id: int, reason: str) -> SheetResult:
    return SheetResult(sheet_id, SheetStatus.FAILED, error=reason,
                       fields={"needs_review": True, "engine_review": True, "error": reason, "flags": ["unreadable"],
                               "reading": None})


#: What a stored result resets on its sheet row, unless the result says otherwise.
SHEET_DEFAULTS = {"claim_token": "", "template": "", "template_page": None, "qr_payload": "", "qr_error": "",
                   "student": "", "exam": "", "needs_review": True, "engine_review": True, "flags": [], "error": "",
                   "reading": None}
