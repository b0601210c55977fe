"""Reviewers' write actions on finished batches: correct answers, mark sheets
reviewed, read a sheet again, regenerate the results CSV.

Every change a person makes is recorded as a ``Correction`` (who, when, which
field, old and new value); the reader's original reading stays on the sheet.
After any change the batch's counts are taken from the rows again and the CSV
is rewritten, so the download always matches what the admin shows.

Corrections win over the reader: reading a sheet again replaces what the
reader saw, then puts every field a person corrected back to the person's
value.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from .. import csvexport, sheet_templates
from ..exams import scores as exam_scores
from ..models import Answer, Batch, Correction, Sheet, SheetStatus, Stage
from ..pipeline import reading, stages
from ..storage import csv_name

logger = logging.getLogger(__name__)

#: Flags that come from comparing sheets with each other (collecting_results);
#: a re-read of one sheet cannot see them, so they are kept.
CROSS_SHEET_FLAGS = stages.COLLECT_FLAGS
NEEDS_REVIEW_FIELD = "needs_review"


class ReviewError(ValueError):
    """A change that cannot be made; ``str(exc)`` says why in plain words."""


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class FieldRule:
    """What a field of a template accepts."""

    kind: str  # "question", "choice", "digit" or "text" (unknown: free text)
    values: tuple[str, ...] = ()
    columns: int = 0
    multiple_allowed: bool = False


def field_rules(template_name: str, page: int | None) -> dict[str, FieldRule]:
    """The rules for every field on ``page`` of a built-in template ({} when unknown)."""
    from ..omr.align import layout_mm

    try:
        template = sheet_templates.resolve_for_qr(template_name)  # OMRChecker ones: free text
        lay = layout_mm(template, int(page or 1))
    except (FileNotFoundError, ValueError, TypeError):
        return {}
    rules: dict[str, FieldRule] = {}
    for g in lay.groups:
        if g.kind == "digit":
            prev = rules.get(g.field)
            rules[g.field] = FieldRule("digit", g.values, (prev.columns if prev else 0) + 1)
        else:
            rules[g.field] = FieldRule(g.kind, g.values, 1, g.multiple_allowed)
    return rules


def clean_value(raw: str, rule: FieldRule | None) -> str:
    """A reviewer's value in the reader's spelling: question options in printed
    order without repeats (``"db"`` -> ``"BD"``), digits for number grids, one
    option for a choice; raises ``ReviewError`` with the reason."""
    text = "".join((raw or "").split())
    if rule is None or rule.kind == "text":
        return text[:64]
    if rule.kind == "digit":
        if not all(c.isdigit() or c == "?" for c in text):
            raise ReviewError(f"“{text}” is not a number: use digits only")
        if len(text) > rule.columns:
            raise ReviewError(f"“{text}” has {len(text)} digits; the grid has {rule.columns}")
        return text
    by_upper = {v.upper(): v for v in rule.values}
    if rule.kind == "choice":
        if text and text.upper() not in by_upper:
            raise ReviewError(f"“{text}” is not one of {', '.join(rule.values)}")
        return by_upper.get(text.upper(), "")
    # A question: letters, each an option, several allowed (a multiple mark is data too).
    chosen = set()
    for c in text.upper():
        if c not in by_upper:
            raise ReviewError(f"“{c}” is not an option here; the options are {', '.join(rule.values)}")
        chosen.add(c)
    return "".join(v for v in rule.values if v.upper() in chosen)


# ---------------------------------------------------------------- corrections


def _check_finished(batch: Batch) -> None:
    if not batch.is_finished:
        raise ReviewError("this batch is still running; review it once it has finished")


@transaction.atomic
def apply_corrections(sheet: Sheet, user, changes: dict[str, str]) -> list[Correction]:
    """Set answer fields of ``sheet`` to a reviewer's values, recording one
    ``Correction`` per field that really changes. ``changes``: {field: value}.
    Raises ``ReviewError`` (nothing written) when a value is not valid.
    Returns the corrections made. The batch's CSV is rewritten after commit."""
    sheet = Sheet.objects.select_for_update().select_related("batch").get(pk=sheet.pk)
    _check_finished(sheet.batch)
    rules = field_rules(sheet.template or sheet.batch.template, sheet.template_page)
    answers = {a.field: a for a in Answer.objects.filter(sheet=sheet)}
    cleaned = {}
    errors = []
    for name, raw in changes.items():
        if rules and name not in rules and name not in answers:
            errors.append(f"{name}: not a field of template {sheet.template or sheet.batch.template}")
            continue
        try:
            cleaned[name] = clean_value(raw, rules.get(name))
        except ReviewError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise ReviewError("; ".join(errors))
    now = timezone.now()
    made = []
    for name, value in cleaned.items():
        answer = answers.get(name)
        old = answer.value if answer else ""
        if answer is not None and old == value:
            continue
        if answer is None:
            answer = Answer(sheet=sheet, field=name, value=value, confidence=None, flags=[])
        answer.value = value
        answer.corrected = True
        answer.save()
        made.append(Correction.objects.create(sheet=sheet, user=user, created_at=now, field=name,
                                              old_value=old, new_value=value))
        if name == "student_number" and not _qr_student(sheet):
            # The sheet's student came from this grid: follow the correction.
            Sheet.objects.filter(pk=sheet.pk).update(student=value[:64])
    if made:
        logger.info("Sheet %s of batch %s: %d corrections by %s", sheet.index, sheet.batch_id, len(made), user)
        _after_change(sheet.batch_id)
        exam_scores.rescore_after_change(sheet.pk)
    return made


def _qr_student(sheet: Sheet) -> str:
    qr = (sheet.reading or {}).get("qr") or {}
    return str(qr.get("student") or "")


@transaction.atomic
def set_needs_review(sheet: Sheet, user, needs_review: bool) -> Correction | None:
    """Mark ``sheet`` reviewed (False) or back in review (True), recorded as a
    correction of the field ``needs_review``."""
    sheet = Sheet.objects.select_for_update().select_related("batch").get(pk=sheet.pk)
    _check_finished(sheet.batch)
    if sheet.needs_review == needs_review:
        return None
    Sheet.objects.filter(pk=sheet.pk).update(needs_review=needs_review)
    correction = Correction.objects.create(sheet=sheet, user=user, field=NEEDS_REVIEW_FIELD,
                                           old_value=_flag_text(sheet.needs_review), new_value=_flag_text(needs_review))
    _after_change(sheet.batch_id)
    return correction


def _flag_text(value: bool) -> str:
    return "true" if value else "false"


# ---------------------------------------------------------------- read again


def read_again(sheet: Sheet, user=None) -> Sheet:
    """Read ``sheet``'s page again with the engine and store the new reading;
    fields a person corrected keep the person's value. Returns the sheet."""
    sheet = Sheet.objects.select_related("batch").get(pk=sheet.pk)
    _check_finished(sheet.batch)
    # The read itself runs outside the transaction: it takes a while and needs no lock.
    result = reading.read_sheet(sheet, sheet.batch)
    with transaction.atomic():
        locked = Sheet.objects.select_for_update().get(pk=sheet.pk)
        kept = [f for f in (locked.flags or []) if f in CROSS_SHEET_FLAGS]
        # The same defaults the pipeline stores a result over (a failed read
        # carries only its error).
        fields = {"template": "", "template_page": None, "qr_payload": "", "qr_error": "", "student": "", "exam": "",
                  "needs_review": True, "engine_review": True, "flags": [], "error": result.error, "reading": None,
                  **result.fields}
        fields["flags"] = [*(fields.get("flags") or []), *(f for f in kept if f not in (fields.get("flags") or []))]
        if kept:
            fields["needs_review"] = True
        Answer.objects.filter(sheet=locked).delete()
        answers = {a.field: a for a in result.answers}
        for name, value in _latest_corrections(locked).items():
            answer = answers.get(name) or Answer(sheet_id=locked.pk, field=name, flags=[])
            answer.value = value
            answer.corrected = True
            answers[name] = answer
        Answer.objects.bulk_create(list(answers.values()))
        for key, value in fields.items():
            setattr(locked, key, value)
        locked.status = result.status
        locked.read_at = timezone.now()
        locked.save()
        if "student_number" in answers and answers["student_number"].corrected and not _qr_student(locked):
            Sheet.objects.filter(pk=locked.pk).update(student=answers["student_number"].value[:64])
        logger.info("Sheet %s of batch %s read again by %s: %s", locked.index, locked.batch_id, user, result.status)
        _after_change(locked.batch_id)
        exam_scores.rescore_after_change(locked.pk)
    locked.refresh_from_db()
    return locked


def _latest_corrections(sheet: Sheet) -> dict[str, str]:
    """Each answer field's latest correction on ``sheet``."""
    latest: dict[str, str] = {}
    for c in Correction.objects.filter(sheet=sheet).exclude(field=NEEDS_REVIEW_FIELD).order_by("created_at", "id"):
        latest[c.field] = c.new_value
    return latest


# ---------------------------------------------------------------- counts and CSV


def refresh_counts(batch_id) -> None:
    """The batch's sheet counts, from the sheet rows (the source of truth)."""
    stats = Sheet.objects.filter(batch_id=batch_id).aggregate(
        total=Count("pk"),
        processed=Count("pk", filter=Q(status__in=[SheetStatus.DONE, SheetStatus.FAILED])),
        failed=Count("pk", filter=Q(status=SheetStatus.FAILED)),
        review=Count("pk", filter=Q(needs_review=True)),
    )
    Batch.objects.filter(pk=batch_id).update(sheets_total=stats["total"], sheets_processed=stats["processed"],
                                             sheets_failed=stats["failed"], sheets_needs_review=stats["review"])


def _after_change(batch_id) -> None:
    refresh_counts(batch_id)
    transaction.on_commit(lambda: regenerate_csv(batch_id))


def regenerate_csv(batch: Batch | str) -> str | None:
    """Write the results CSV of a completed batch again from the rows (with
    every correction). Returns the stored name, or None when the batch is not
    completed (a running batch writes its CSV itself; a failed one has none)."""
    batch_id = batch.pk if isinstance(batch, Batch) else batch
    with transaction.atomic():
        # One writer at a time, so two reviewers saving at once cannot leave the
        # batch pointing at a half-replaced file.
        row = Batch.objects.select_for_update().filter(pk=batch_id).first()
        if row is None or row.stage != Stage.COMPLETED:
            return None
        buffer = io.StringIO(newline="")
        count = csvexport.write_results_csv(row, buffer)
        name = csv_name(row)
        if default_storage.exists(name):
            default_storage.delete(name)
        # The same encoding as the pipeline's file (a BOM, so spreadsheets see UTF-8).
        name = default_storage.save(name, ContentFile(buffer.getvalue().encode("utf-8-sig")))
        Batch.objects.filter(pk=batch_id).update(results_csv=name)
    logger.info("Results CSV of batch %s regenerated: %d sheets", batch_id, count)
    return name
