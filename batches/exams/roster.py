"""A roster imported from CSV: student number, name, optional group.

The file may start with a header row (``student_number``/``number``/``id``,
``name``, ``group``/``class``, in any order and case) or not (then the columns
are number, name, group). Separators ``,``, ``;`` and tab are recognised, and
a BOM is skipped. Every bad row is reported by its line number, and nothing is
imported while any row is bad: a number missing or too long, a name missing, a
row with too many cells, a number given twice in the file. ``replace`` empties
the roster first; otherwise a number already on the roster takes the new name
and group. Sheets already scored are matched again to the roster.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from django.db import transaction

from .models import Exam, RosterEntry

HEADER_NAMES = {
    "student_number": {"student_number", "student number", "student", "number", "student_id", "student id", "id",
                       "matriculation", "matrikelnummer", "roll", "roll_number"},
    "name": {"name", "student_name", "student name", "full name", "full_name"},
    "group": {"group", "class", "section", "group_name"},
}
MAX_NUMBER = 64
MAX_NAME = 200
MAX_GROUP = 100
MAX_ROWS = 100_000


class RosterError(ValueError):
    """A roster file that cannot be imported; ``errors`` names each bad row
    (``line 4: no student number``)."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass(frozen=True)
class RosterImport:
    added: int
    updated: int
    unchanged: int
    rematched: int
    header: bool
    columns: dict[str, int] = field(default_factory=dict)


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.lstrip("\ufeff")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise RosterError(["the file is not text (UTF-8 or Windows-1252)"])


def _dialect(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _header(cells: list[str]) -> dict[str, int] | None:
    """Column positions when ``cells`` is a header row, else None."""
    found: dict[str, int] = {}
    for i, cell in enumerate(cells):
        text = cell.strip().lower()
        for column, names in HEADER_NAMES.items():
            if text in names and column not in found:
                found[column] = i
    return found if "student_number" in found and "name" in found else None


def _cell(cells: list[str], i: int | None) -> str:
    return cells[i].strip() if i is not None and i < len(cells) else ""


def parse_roster(data: bytes | str) -> tuple[list[tuple[int, str, str, str]], bool, dict[str, int]]:
    """Rows ``(line, number, name, group)`` of a roster file, whether it had a
    header, and the column positions. Raises ``RosterError`` listing every bad
    row by line."""
    text = _decode(data)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_dialect(text))
    rows: list[tuple[int, str, str, str]] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    columns = {"student_number": 0, "name": 1, "group": 2}
    header = False
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if not rows and not errors and not header:
                found = _header(cells)
                if found is not None:
                    columns, header = found, True
                    continue
            if len(rows) >= MAX_ROWS:
                errors.append(f"line {line}: more than {MAX_ROWS} students; split the roster")
                break
            width = max(columns.values()) + 1 if header else 3
            if not header and len(cells) > width and any(c.strip() for c in cells[width:]):
                errors.append(f"line {line}: {len(cells)} cells; expected student number, name and an optional group")
                continue
            number, name, group = (_cell(cells, columns.get(c)) for c in ("student_number", "name", "group"))
            problems = []
            if not number:
                problems.append("no student number")
            elif len(number) > MAX_NUMBER:
                problems.append(f"the student number is longer than {MAX_NUMBER} characters")
            elif any(c.isspace() for c in number):
                problems.append(f"the student number {number!r} contains a space")
            if not name:
                problems.append("no name")
            elif len(name) > MAX_NAME:
                problems.append(f"the name is longer than {MAX_NAME} characters")
            if len(group) > MAX_GROUP:
                problems.append(f"the group is longer than {MAX_GROUP} characters")
            if number and number in seen:
                problems.append(f"student number {number} is already on line {seen[number]}")
            if problems:
                errors.append(f"line {line}: " + "; ".join(problems))
                continue
            seen[number] = line
            rows.append((line, number, name, group))
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    if errors:
        raise RosterError(errors)
    if not rows:
        raise RosterError(["the file holds no students"])
    return rows, header, columns


def import_roster_csv(exam: Exam, data: bytes | str, *, replace: bool = False) -> RosterImport:
    """Import a roster file into ``exam`` (all rows or none; see the module's
    doc). Returns the counts; raises ``RosterError`` listing every bad row."""
    from . import scores

    rows, header, columns = parse_roster(data)
    with transaction.atomic():
        Exam.objects.select_for_update().filter(pk=exam.pk).first()
        if replace:
            RosterEntry.objects.filter(exam=exam).delete()
        existing = {e.student_number: e for e in RosterEntry.objects.filter(exam=exam)}
        added, changed, unchanged = [], [], 0
        for _line, number, name, group in rows:
            entry = existing.get(number)
            if entry is None:
                added.append(RosterEntry(exam=exam, student_number=number, name=name, group=group))
            elif (entry.name, entry.group) != (name, group):
                entry.name, entry.group = name, group
                changed.append(entry)
            else:
                unchanged += 1
        RosterEntry.objects.bulk_create(added, batch_size=1000)
        RosterEntry.objects.bulk_update(changed, ["name", "group"], batch_size=1000)
        rematched = scores.match_roster(exam)
    return RosterImport(len(added), len(changed), unchanged, rematched, header, columns)
