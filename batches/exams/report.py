"""What does not add up when sheets are matched to the roster: sheets of
students not on the roster, students with more than one sheet, roster
students with no sheet, multi-page sheets missing pages, and sheets not
scored (another exam's, a version with no key, an answer that is not an
option). Each sheet comes with the link of its page for review.

A batch's report covers the batch's sheets; students with two sheets count
every sheet of the exam (the second may be in another batch), and the roster
students with no sheet are those with none in any batch of the exam.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.urls import reverse

from ..models import Batch, Sheet
from .models import Exam, RosterEntry, SheetScore
from .services import compiled


def sheet_url(sheet_id: int) -> str:
    """The page where a sheet is looked at and corrected (the admin's review screen)."""
    return reverse("admin:batches_sheet_change", args=[sheet_id])


def _sheet(row: SheetScore) -> dict[str, Any]:
    return {"sheet_id": row.sheet_id, "batch_id": str(row.batch_id), "sheet": row.sheet.index,
            "source_file": row.sheet.source_name, "student": row.student, "sheet_url": sheet_url(row.sheet_id)}


def _report(exam: Exam, rows: list[SheetScore], every_row: list[SheetScore]) -> dict[str, Any]:
    try:
        pages = compiled(exam).template.pages
    except (FileNotFoundError, ValueError):
        pages = 1
    unknown = [_sheet(r) for r in rows if r.roster_entry_id is None and r.problem != "other_exam"]

    by_student: dict[str, list[SheetScore]] = defaultdict(list)
    for r in every_row:
        if r.student and r.problem != "other_exam":
            by_student[r.student].append(r)
    mine = {r.student for r in rows}
    names = dict(RosterEntry.objects.filter(exam=exam).values_list("student_number", "name"))
    duplicates = [{"student": s, "name": names.get(s, ""), "sheets": [_sheet(r) for r in found]}
                  for s, found in sorted(by_student.items()) if len(found) > 1 and s in mine]

    seen = set(by_student)
    absent = [{"student_number": n, "name": name, "group": group}
              for n, name, group in RosterEntry.objects.filter(exam=exam).order_by("student_number")
              .values_list("student_number", "name", "group") if n not in seen]

    missing = []
    if pages > 1:
        page_of = dict(Sheet.objects.filter(pk__in=[p for r in rows for p in r.pages])
                       .values_list("pk", "template_page"))
        for r in rows:
            found = sorted({page_of.get(p) or 1 for p in r.pages})
            lacking = [n for n in range(1, pages + 1) if n not in found]
            if lacking:
                missing.append({**_sheet(r), "pages_found": found, "pages_missing": lacking})

    not_scored = [{**_sheet(r), "problem": r.problem, "version": r.version} for r in rows if r.problem]
    return {"exam_id": exam.pk, "sheets": len(rows), "roster": len(names), "unknown_students": unknown,
            "duplicates": duplicates, "absent": absent, "missing_pages": missing, "not_scored": not_scored}


def _rows(exam: Exam, batch_id=None) -> list[SheetScore]:
    rows = SheetScore.objects.filter(exam=exam).select_related("sheet").order_by("batch__created_at", "sheet__index")
    if batch_id is not None:
        rows = rows.filter(batch_id=batch_id)
    return list(rows.defer("answers", "earned", "right", "sheet__reading"))


def batch_report(batch: Batch) -> dict[str, Any] | None:
    """The report of a batch uploaded for an exam (None for a batch without one)."""
    if batch.exam_id is None:
        return None
    exam = Exam.objects.get(pk=batch.exam_id)
    return _report(exam, _rows(exam, batch.pk), _rows(exam))


def exam_report(exam: Exam) -> dict[str, Any]:
    """The report over every batch of the exam."""
    rows = _rows(exam)
    return _report(exam, rows, rows)
