"""The results CSV: one row per sheet, every answer field a column.

Columns: ``sheet`` (position in the upload), ``source_file``, ``source_page``,
``template``, ``template_page``, ``student``, ``exam``, ``status``,
``needs_review``, ``flags`` (sheet flags, then ``field:flag`` for every field
flag other than a plain blank), ``error``, then every field of the templates
read (ids first, then questions in order). Answers come from the ``Answer``
rows, so reviewers' corrections show when the file is generated again.

Spreadsheets run cells that start with ``=``, ``+``, ``-``, ``@``, tab or CR
as formulas; such cells are prefixed with ``'`` unless they are plain numbers.
"""

from __future__ import annotations

import csv
import re

import orjson
from django.db.models import TextField
from django.db.models.functions import Cast

from .models import Answer, Batch, Sheet

FIXED_COLUMNS = ["sheet", "source_file", "source_page", "template", "template_page", "student", "exam", "status",
                 "needs_review", "flags", "error"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_CHUNK = 500


def safe_cell(value) -> str | int | float:
    """A value as a CSV cell that no spreadsheet will run as a formula.
    Numbers (and strings that are plain numbers) stay numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    text = str(value)
    if text.startswith(_FORMULA_START) and not _NUMBER_RE.match(text):
        return "'" + text
    return text


def field_columns(batch: Batch) -> list[str]:
    """Answer columns: each template's fields in its own order, then any others."""
    from . import sheet_templates

    names: list[str] = []
    templates = list(Sheet.objects.filter(batch=batch).exclude(template="").order_by("template")
                     .values_list("template", flat=True).distinct())
    for name in sorted(set(templates) | {batch.template}, key=lambda n: (n != batch.template, n)):
        try:
            fields = sheet_templates.resolve(name).field_names()
        except (FileNotFoundError, ValueError):
            continue
        names.extend(f for f in fields if f not in names)
    extra = Answer.objects.filter(sheet__batch=batch).exclude(field__in=names).values_list("field", flat=True)
    names.extend(sorted(set(extra)))
    return names


def write_results_csv(batch: Batch, out) -> int:
    """Write the results of ``batch`` as CSV to the text file ``out``; returns
    the number of sheet rows. Reads the sheets in chunks, so memory stays flat."""
    fields = field_columns(batch)
    writer = csv.writer(out)
    writer.writerow(FIXED_COLUMNS + fields)
    count = 0
    sheets = Sheet.objects.filter(batch=batch).order_by("index").values_list(
        "pk", "index", "source_name", "source_page", "template", "template_page", "student", "exam", "status",
        "needs_review", "flags", "error")
    chunk: list[tuple] = []
    for row in sheets.iterator(chunk_size=_CHUNK):
        chunk.append(row)
        if len(chunk) >= _CHUNK:
            count += _write_chunk(writer, chunk, fields)
            chunk = []
    if chunk:
        count += _write_chunk(writer, chunk, fields)
    return count


def _write_chunk(writer, chunk: list[tuple], fields: list[str]) -> int:
    answers: dict[int, dict[str, tuple[str, list]]] = {}
    # Flags come as JSON text and only non-empty lists are parsed: decoding
    # every answer's "[]" through the JSONField took half the CSV's time.
    rows = (Answer.objects.filter(sheet_id__in=[r[0] for r in chunk])
            .annotate(flags_text=Cast("flags", TextField()))
            .values_list("sheet_id", "field", "value", "flags_text"))
    for sheet_id, name, value, flags_text in rows:
        flags = orjson.loads(flags_text) if flags_text and flags_text != "[]" else []
        answers.setdefault(sheet_id, {})[name] = (value, flags)
    for (pk, index, source, source_page, template, template_page, student, exam, status, review, sheet_flags,
         error) in chunk:
        mine = answers.get(pk, {})
        flag_text = list(sheet_flags or [])
        for name in fields:
            for flag in mine.get(name, ("", []))[1]:
                if flag != "blank":
                    flag_text.append(f"{name}:{flag}")
        cells = [index, source, source_page, template, template_page, student, exam, status, review,
                 "; ".join(flag_text), error]
        cells += [mine[name][0] if name in mine else "" for name in fields]
        writer.writerow([safe_cell(c) for c in cells])
    return len(chunk)
