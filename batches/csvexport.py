"""The results CSV: one row per sheet, every answer field a column.

Columns: ``sheet`` (position in the upload), ``source_file``, ``source_page``,
``template``, ``template_page``, ``student``, ``exam``, ``status``,
``needs_review``, ``flags`` (sheet flags, then ``field:flag`` for every field
flag other than a plain blank), ``error``, then every field of the templates
read (ids first, then questions in order). Answers come from the ``Answer``
rows, so reviewers' corrections show when the file is generated again.

Spreadsheets run cells that start with ``=``, ``+``, ``-``, ``@``, tab or CR
as formulas; such cells, and such column names in the header row (an imported
template names the columns), are prefixed with ``'`` unless they are plain
numbers or a lone ``-`` or ``+`` (nothing to run: an OMRChecker template's
``emptyValue`` is often ``-``, and its users' spreadsheets look for it).
Control characters other than tab and line breaks are removed from every cell.
"""

from __future__ import annotations

import csv
import io
import re
from functools import lru_cache

import orjson
from django.db import connection

from .models import Answer, Batch, Sheet
from .omr.flags import NOT_REVIEW
from .omr.text import strip as strip_controls
from .storage import csv_name, replace

FIXED_COLUMNS = ["sheet", "source_file", "source_page", "template", "template_page", "student", "exam", "status",
                 "needs_review", "flags", "error"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_LONE_SIGNS = ("-", "+")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_CHUNK = 500


@lru_cache(maxsize=4096)
def _safe_text(text: str) -> str:
    """``safe_cell`` of a string; answers repeat (A, B, ..., blank), so it is cached."""
    text = strip_controls(text, multiline=True)  # a NUL or bell in a cell breaks spreadsheets
    if text.startswith(_FORMULA_START) and not _NUMBER_RE.match(text) and text not in _LONE_SIGNS:
        return "'" + text
    return text


def safe_cell(value) -> str | int | float:
    """A value as a CSV cell that no spreadsheet will run as a formula.
    Numbers (and strings that are plain numbers) stay numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    return _safe_text(str(value))


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
    # Field names come from templates, which staff may import: the header is neutralised like the cells.
    writer.writerow(FIXED_COLUMNS + [_safe_text(name) for name in fields])
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


def _answer_rows(sheet_ids: list[int]) -> list[tuple]:
    """(sheet id, field, value, flags as JSON text) of the answers of
    ``sheet_ids``, by one plain query: the queryset's per-row work took as
    long as the database (about 100 rows per sheet)."""
    meta = Answer._meta
    qn = connection.ops.quote_name
    column = {name: qn(meta.get_field(name).column) for name in ("sheet", "field", "value", "flags")}
    marks = ", ".join(["%s"] * len(sheet_ids))
    sql = (f"SELECT {column['sheet']}, {column['field']}, {column['value']}, CAST({column['flags']} AS TEXT) "
           f"FROM {qn(meta.db_table)} WHERE {column['sheet']} IN ({marks})")
    with connection.cursor() as cursor:
        cursor.execute(sql, sheet_ids)
        return cursor.fetchall()


def _write_chunk(writer, chunk: list[tuple], fields: list[str]) -> int:
    # About a hundred answer rows per sheet: this loop is the stage's cost.
    # Flags come as JSON text and only non-empty lists are parsed (decoding
    # every answer's "[]" through the JSONField took half the CSV's time), and
    # the rows are fetched in large pieces rather than Django's 100 at a time.
    order = {name: i for i, name in enumerate(fields)}
    answers: dict[int, dict[str, str]] = {}
    flagged: dict[int, list[tuple[int, str, list]]] = {}
    for sheet_id, name, value, flags_text in _answer_rows([r[0] for r in chunk]):
        answers.setdefault(sheet_id, {})[name] = value
        if flags_text and flags_text != "[]":
            flagged.setdefault(sheet_id, []).append((order.get(name, len(order)), name, orjson.loads(flags_text)))
    for (pk, index, source, source_page, template, template_page, student, exam, status, review, sheet_flags,
         error) in chunk:
        mine = answers.get(pk, {})
        flag_text = list(sheet_flags or [])
        for _order, name, flags in sorted(flagged.get(pk, ())):
            flag_text.extend(f"{name}:{flag}" for flag in flags if flag not in NOT_REVIEW)
        cells = [safe_cell(c) for c in (index, source, source_page, template, template_page, student, exam, status,
                                        review, "; ".join(flag_text), error)]
        cells += [_safe_text(mine.get(name, "")) for name in fields]
        writer.writerow(cells)
    return len(chunk)


def save_results_csv(batch: Batch) -> int:
    """Write the batch's results CSV from its rows and point the batch at it;
    returns the number of sheets. The file replaces the old one in one step
    (``storage.replace``): a completed batch always has a whole CSV. Encoded
    UTF-8 with a BOM, so spreadsheets see UTF-8."""
    buffer = io.StringIO(newline="")
    count = write_results_csv(batch, buffer)
    name = replace(csv_name(batch), buffer.getvalue().encode("utf-8-sig"))
    Batch.objects.filter(pk=batch.pk).update(results_csv=name)
    batch.results_csv.name = name
    return count
