"""Reading one sheet: the engine's reading of a stored page, and the values
its sheet row and answer rows take from it. The pipeline's fan-out and a
reviewer's "read again" both go through here."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from django.conf import settings

from .. import sheet_templates
from ..models import Answer, Batch, Sheet, SheetStatus, sheet_needs_review
from ..omr.flags import Flag
from ..omr.imageio import ImageError, PixelLimitError, probe
from ..omr.reader import in_doubt
from . import watchdog
from .extract import damaged_page_reason

logger = logging.getLogger(__name__)

#: What a stored result sets on its sheet row, unless the result says otherwise.
SHEET_DEFAULTS = {"template": "", "template_page": None, "qr_payload": "", "qr_error": "", "student": "", "exam": "",
                  "needs_review": True, "engine_review": True, "flags": [], "error": "", "reading": None}


@dataclass
class SheetResult:
    """What one read gives one sheet row (and its answer rows)."""

    sheet_id: int
    status: str
    reading: dict | None = None
    error: str = ""
    rows: list[tuple] = field(default_factory=list)  # answer rows for bulk.insert_answers()
    fields: dict = field(default_factory=dict)

    @property
    def answers(self) -> list[Answer]:
        """The answer rows as (unsaved) ``Answer`` objects."""
        return [Answer(sheet_id=r[0], field=r[1], value=r[2], confidence=r[3], flags=r[4], corrected=r[5])
                for r in self.rows]

    def sheet_values(self) -> dict:
        """Every result field of the sheet row: the defaults, then what this
        read found (a failed read carries only its error)."""
        return {**SHEET_DEFAULTS, "error": self.error, **self.fields, "status": self.status}


def read_sheet(sheet: Sheet, batch: Batch) -> SheetResult:
    """Read one stored page with the engine. Never raises for a bad page: the
    result is a failed sheet with the reason."""
    try:
        data = sheet.read_image()
    except OSError as exc:
        return SheetResult(sheet.pk, SheetStatus.FAILED, error=f"page image missing ({exc.strerror or exc})")
    if (damaged := damaged_page_reason(sheet.image, data)) is not None:
        return failed_result(sheet.pk, damaged)
    try:
        probe(data, settings.OMR_MAX_PIXELS)
    except PixelLimitError as exc:
        # The engine knows no settings; the user may change this one.
        return failed_result(sheet.pk, f"{exc} (OMR_MAX_PIXELS)")
    except ImageError:
        pass  # the engine's reading says what is wrong with it
    chosen = sheet_templates.resolve(batch.template)
    try:
        with watchdog.page_time_limit(settings.OMR_SHEET_TIME_LIMIT, f"Reading page {sheet.index} of batch {batch.pk}"):
            readings = chosen.read_image_bytes(data, source=sheet.source_name, batch_has_qr=batch.has_qr,
                                               max_pixels=settings.OMR_MAX_PIXELS)
    except Exception as exc:  # an engine bug must cost one sheet, not the batch
        logger.exception("Reading sheet %s of batch %s failed", sheet.index, batch.pk)
        return SheetResult(sheet.pk, SheetStatus.FAILED, error=f"could not read this page ({type(exc).__name__})")
    if not readings:
        return SheetResult(sheet.pk, SheetStatus.FAILED, error="no page found in the image")
    reading = readings[0].to_dict()
    if len(readings) > 1:
        reading["sheet_flags"] = [*reading.get("sheet_flags", []), Flag.EXTRA_PAGES]
        reading["needs_review"] = True
    return result_from_reading(sheet.pk, reading, batch)


def reading_in_doubt(reading: dict | None) -> bool:
    """The engine's review rule (``omr.reader.in_doubt``) on a stored reading,
    whatever its summary says: any doubt goes to review."""
    if not reading:
        return True
    return bool(reading.get("needs_review")) or in_doubt(reading.get("error"), reading.get("sheet_flags"),
                                                         reading.get("flags") or {})


def result_from_reading(sheet_id: int, reading: dict, batch: Batch) -> SheetResult:
    """Turn an engine reading (``SheetReading.to_dict()``) into row values."""
    error = reading.get("error") or ""
    qr = reading.get("qr") or {}
    answers = reading.get("answers") or {}
    confidence = reading.get("confidence") or {}
    flags = reading.get("flags") or {}
    engine_review = reading_in_doubt(reading)
    sheet_flags = list(reading.get("sheet_flags") or [])
    status = SheetStatus.FAILED if error and not answers else SheetStatus.DONE
    needs_review = sheet_needs_review(status=status, error=error, flags=sheet_flags, engine_review=engine_review)
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
        "engine_review": engine_review,
        "flags": sheet_flags,
        "error": error,
        "reading": stored,
    }
    rows = [
        (sheet_id, name[:64], str(value)[:64],
         confidence.get(name) if isinstance(confidence, dict) else None,
         list(flags.get(name) or []), False)
        for name, value in answers.items()
    ]
    return SheetResult(sheet_id, status, reading=stored, error=error, rows=rows, fields=values)


def failed_result(sheet_id: int, reason: str) -> SheetResult:
    """A page given up without a reading (over a limit, or stopping its worker)."""
    return SheetResult(sheet_id, SheetStatus.FAILED, error=reason, fields={"flags": [Flag.UNREADABLE]})
