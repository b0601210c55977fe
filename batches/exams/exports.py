"""An exam's results and item analysis as rows, CSV, an Excel workbook and
JSON, for the whole exam or one of its batches (``batch_id``).

The results CSV has the columns the API fixes: ``source_file``, ``student``,
``version``, ``score``, ``max_score``, then one column per question of the
exam (the template's field names) with the answer as read or corrected, a
multiple mark as its letters in option order (``"BD"``). One row per sheet
read, including the sheets not scored (their score is empty). Cells that a
spreadsheet would run as a formula are neutralised as in the batch CSV; the
workbook stores every text as text (never a formula) and scores as numbers.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterator
from typing import Any

from ..csvexport import safe_cell
from ..scoring.rules import canonical_answer
from .models import Exam, SheetScore
from .report import sheet_url
from .scores import exam_statistics, statistics_of
from .services import compiled

RESULT_COLUMNS = ["source_file", "student", "version", "score", "max_score"]


@functools.lru_cache(maxsize=4096)
def _answer(value: str, options: tuple[str, ...]) -> str:
    # Cached: a results table asks this for every cell (200,000 for 2,000
    # sheets of 100 questions), of a few dozen distinct answers.
    canonical = canonical_answer(value or "", options)
    return value if canonical is None else canonical


def result_rows(exam: Exam, batch_id=None, group: str | None = None) -> Iterator[dict[str, Any]]:
    """One dict per sheet, in upload order: ``sheet_id``, ``batch_id``,
    ``source_file``, ``student``, ``name``, ``group``, ``version``, ``score``
    (None when not scored), ``max_score``, ``problem``, ``sheet_url``,
    ``answers`` and ``right`` ({question: ...}, the exam's questions).
    ``group`` keeps the students of that roster group."""
    questions = compiled(exam).rules.questions
    rows = (SheetScore.objects.filter(exam=exam).select_related("sheet", "roster_entry")
            .only("pk", "sheet_id", "batch_id", "student", "version", "score", "max_score", "problem", "answers",
                  "right", "sheet__source_name", "sheet__index", "roster_entry__name", "roster_entry__group")
            .order_by("batch__created_at", "sheet__index"))
    if batch_id is not None:
        rows = rows.filter(batch_id=batch_id)
    if group is not None:
        rows = rows.filter(roster_entry__group=group)
    for row in rows.iterator(chunk_size=500):
        entry = row.roster_entry
        right = dict(zip(questions, row.right, strict=False)) if row.right else {}
        yield {
            "sheet_id": row.sheet_id, "batch_id": str(row.batch_id), "sheet": row.sheet.index,
            "source_file": row.sheet.source_name, "student": row.student,
            "name": entry.name if entry else "", "group": entry.group if entry else "",
            "version": row.version, "score": row.score, "max_score": row.max_score, "problem": row.problem,
            "sheet_url": sheet_url(row.sheet_id),
            "answers": {q: _answer(row.answers.get(q, ""), opts) for q, opts in questions.items()},
            "right": right,
        }


def write_results_csv(exam: Exam, out, batch_id=None) -> int:
    """The results CSV (the API's columns) written to the text file ``out``;
    returns the number of rows."""
    questions = list(compiled(exam).rules.questions)
    writer = csv.writer(out)
    writer.writerow(RESULT_COLUMNS + questions)
    count = 0
    for row in result_rows(exam, batch_id):
        cells = [row["source_file"], row["student"], row["version"], row["score"], row["max_score"]]
        writer.writerow([safe_cell(c) for c in cells] + [safe_cell(row["answers"][q]) for q in questions])
        count += 1
    return count


def results_csv_text(exam: Exam, batch_id=None) -> str:
    buffer = io.StringIO(newline="")
    write_results_csv(exam, buffer, batch_id)
    return buffer.getvalue()


# ---------------------------------------------------------------- item analysis


def _stats(exam: Exam, batch_id=None):
    return exam_statistics(exam) if batch_id is None else statistics_of(exam, batch_id=batch_id)


def items_json(exam: Exam, batch_id=None) -> dict[str, Any]:
    """``items.json``: students, KR-20 and per question difficulty,
    discrimination and the options chosen (see docs/scoring.md)."""
    return _stats(exam, batch_id).items()


def summary_json(exam: Exam, batch_id=None) -> dict[str, Any]:
    """Sheets, mean and standard deviation, max_score, histogram, KR-20 and
    the questions that look miskeyed."""
    stats = _stats(exam, batch_id)
    return {**stats.summary(), "kr20": stats.kr20(), "miskey_hints": stats.miskey_hints()}


def _option_labels(exam: Exam) -> list[str]:
    labels: list[str] = []
    for options in compiled(exam).rules.questions.values():
        labels.extend(o for o in options if o not in labels)
    return labels


def _hints_by_question(stats) -> dict[str, list[str]]:
    hints: dict[str, list[str]] = {}
    for h in stats.miskey_hints():
        if h["reason"] == "negative_discrimination":
            text = "negative discrimination"
        else:
            text = f"version {h['version']}: {h['answer']} chosen by {h['chosen']}, right {h['right']}"
        hints.setdefault(h["question"], []).append(text)
    return hints


def item_rows(exam: Exam, batch_id=None) -> tuple[list[str], list[list[Any]]]:
    """The item analysis as a header and rows: question, difficulty,
    discrimination, each option's count, blank, multiple, and why it may be
    miskeyed."""
    stats = _stats(exam, batch_id)
    labels = _option_labels(exam)
    header = ["question", "difficulty", "discrimination", *labels, "blank", "multiple", "miskey_hint"]
    hints = _hints_by_question(stats)
    rows = []
    for q, item in stats.items()["items"].items():
        options = item["options"]
        rows.append([q, item["difficulty"], item["discrimination"], *(options.get(o, "") for o in labels),
                     options["blank"], options["multiple"], "; ".join(hints.get(q, []))])
    return header, rows


def write_items_csv(exam: Exam, out, batch_id=None) -> int:
    header, rows = item_rows(exam, batch_id)
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([safe_cell(c) for c in row])
    return len(rows)


def items_csv_text(exam: Exam, batch_id=None) -> str:
    buffer = io.StringIO(newline="")
    write_items_csv(exam, buffer, batch_id)
    return buffer.getvalue()


# ---------------------------------------------------------------- workbook


def _append(sheet, values: list[Any]) -> None:
    """A row whose text cells stay text: openpyxl would store a string that
    starts with ``=`` as a formula."""
    sheet.append([None if v is None else v for v in values])
    for cell in sheet[sheet.max_row]:
        if isinstance(cell.value, str):
            cell.data_type = "s"


def results_workbook(exam: Exam, batch_id=None) -> bytes:
    """The Excel workbook: ``Results`` (one row per sheet, scores as numbers,
    then name, group and what is wrong with a sheet not scored), ``Items``
    (the item analysis) and ``Summary``."""
    from openpyxl import Workbook

    questions = list(compiled(exam).rules.questions)
    book = Workbook()
    results = book.active
    results.title = "Results"
    _append(results, RESULT_COLUMNS + questions + ["name", "group", "problem"])
    for row in result_rows(exam, batch_id):
        _append(results, [row["source_file"], row["student"], row["version"], row["score"], row["max_score"],
                          *(row["answers"][q] for q in questions), row["name"], row["group"], row["problem"]])
    results.freeze_panes = "C2"

    items = book.create_sheet("Items")
    header, rows = item_rows(exam, batch_id)
    _append(items, header)
    for row in rows:
        _append(items, row)

    summary = book.create_sheet("Summary")
    figures = summary_json(exam, batch_id)
    for label, value in [("exam", exam.name), ("template", exam.template), ("sheets", figures["sheets"]),
                         ("mean", figures["mean"]), ("sd", figures["sd"]), ("max_score", figures["max_score"]),
                         ("kr20", figures["kr20"])]:
        _append(summary, [label, value])
    _append(summary, [])
    _append(summary, ["from", "to", "count"])
    for b in figures["histogram"]:
        _append(summary, [b["from"], b["to"], b["count"]])

    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
