"""Sheet templates: the JSON file format, its validation, and the built-in templates.

A template describes one printed layout in millimetres, measured from the top-left
corner of the page. The same template drives the printed PDF (``render``), the
resolved pixel geometry (``layout``) and the reader, so what is printed and what
is read can never disagree. The format is documented in ``docs/templates.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "omr-template/1"
BUILTIN_DIR = Path(__file__).with_name("sheets")

PAGE_SIZES_MM = {"A4": (210.0, 297.0), "LETTER": (215.9, 279.4)}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class TemplateError(ValueError):
    """A template file that does not follow the format; ``errors`` lists each problem
    as ``"path.to.field: what is wrong"``."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid template: " + "; ".join(errors))


@dataclass(frozen=True)
class Mark:
    """A solid square registration mark: centre and side, in mm."""

    x: float
    y: float
    size: float


@dataclass(frozen=True)
class Box:
    """A rectangle in mm: top-left corner, width and height."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class QuestionBlock:
    """Multiple-choice questions numbered ``first``.. laid out in columns.

    Question ``first + i`` sits in column ``i // rows``, row ``i % rows``. Its
    bubbles run left to right, one per option, ``option_pitch`` apart; rows are
    ``row_pitch`` apart and columns ``column_pitch`` apart. ``x``/``y`` is the
    centre of the first option's bubble of the first question. Field names come
    from ``field_format`` (``{n}`` is the question number).
    """

    page: int
    first: int
    count: int
    options: tuple[str, ...]
    x: float
    y: float
    rows: int
    row_pitch: float
    option_pitch: float
    column_pitch: float
    field_format: str = "q{n}"
    multiple_allowed: bool = False

    def field_name(self, number: int) -> str:
        return self.field_format.format(n=number)


@dataclass(frozen=True)
class DigitBlock:
    """A grid of digits written one per column (student number, exam code...).

    Column ``k`` holds one bubble per value (``values``, top to bottom,
    ``row_pitch`` apart); columns are ``column_pitch`` apart. ``x``/``y`` is the
    centre of the top bubble of the first column. The field's value is the
    digits read, left to right; columns left blank at the end are dropped, so a
    shorter number may be written left-aligned.
    """

    page: int
    name: str
    label: str
    digits: int
    x: float
    y: float
    column_pitch: float
    row_pitch: float
    values: tuple[str, ...] = tuple("0123456789")
    write_in_boxes: bool = True


@dataclass(frozen=True)
class ChoiceBlock:
    """One named single-choice field (exam version, form...), bubbles in a row."""

    page: int
    name: str
    label: str
    options: tuple[str, ...]
    x: float
    y: float
    option_pitch: float


@dataclass(frozen=True)
class TextBlock:
    """Printed text only (labels, instructions); never read."""

    page: int
    x: float
    y: float
    text: str
    size: float = 9.0
    bold: bool = False


@dataclass(frozen=True)
class Template:
    """One printed layout. All lengths in millimetres."""

    name: str
    title: str
    page_width: float
    page_height: float
    pages: int
    marks: tuple[Mark, ...]
    key: Box
    qr: Box
    bubble_diameter: float
    questions: tuple[QuestionBlock, ...] = ()
    digit_grids: tuple[DigitBlock, ...] = ()
    choices: tuple[ChoiceBlock, ...] = ()
    texts: tuple[TextBlock, ...] = ()
    version: int = 1
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def question_count(self) -> int:
        return sum(b.count for b in self.questions)

    def field_names(self) -> list[str]:
        """Every field read from this template, in CSV order (ids first)."""
        names: list[str] = []
        for block in self.digit_grids:
            if block.name not in names:
                names.append(block.name)
        for block in self.choices:
            if block.name not in names:
                names.append(block.name)
        for block in sorted(self.questions, key=lambda b: b.first):
            names.extend(block.field_name(block.first + i) for i in range(block.count))
        return names

    def to_dict(self) -> dict[str, Any]:
        return template_to_dict(self)


# ---------------------------------------------------------------- validation


class _Checker:
    """Collects errors by field path while reading a template dict."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def get(self, obj: dict, key: str, path: str, kind, default: Any = ..., minimum=None):
        if not isinstance(obj, dict):
            self.fail(path, "must be an object")
            return None
        full = f"{path}.{key}" if path else key
        if key not in obj:
            if default is ...:
                self.fail(full, "is required")
                return None
            return default
        value = obj[key]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(full, f"must be a number, not {value!r}")
                return None
            value = float(value)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(full, f"must be a whole number, not {value!r}")
                return None
        elif kind is bool:
            if not isinstance(value, bool):
                self.fail(full, f"must be true or false, not {value!r}")
                return None
        elif kind is str:
            if not isinstance(value, str):
                self.fail(full, f"must be a string, not {value!r}")
                return None
        elif kind is list:
            if not isinstance(value, list):
                self.fail(full, "must be a list")
                return None
        elif kind is dict:
            if not isinstance(value, dict):
                self.fail(full, "must be an object")
                return None
        if minimum is not None and value is not None and value < minimum:
            self.fail(full, f"must be at least {minimum}, not {value}")
            return None
        return value

    def labels(self, obj: dict, key: str, path: str, lo: int, hi: int, default=...) -> tuple[str, ...]:
        raw = self.get(obj, key, path, None, default)
        full = f"{path}.{key}"
        if raw is None:
            return ()
        if isinstance(raw, str):
            raw = list(raw)
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            self.fail(full, "must be a list of non-empty strings")
            return ()
        if not lo <= len(raw) <= hi:
            self.fail(full, f"must have {lo} to {hi} entries, not {len(raw)}")
        if len(set(raw)) != len(raw):
            self.fail(full, "has duplicate labels")
        return tuple(raw)


def load_builtin_template(name: str) -> Template:
    """A built-in template by name, and nothing else: the lookup for names read
    off a sheet (a QR code), which must never open a file path it names.
    Raises ``FileNotFoundError`` for any other name."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name not in builtin_names():
        raise FileNotFoundError(f"no built-in template {name!r} (built-ins: {', '.join(builtin_names())})")
    return load_template(name)


def load_template(source: str | Path | dict) -> Template:
    """Load and validate a template.

    ``source`` is a built-in template name (see ``builtin_names()``), a path to a
    JSON file, or an already parsed dict. Raises ``TemplateError`` listing every
    problem by field path, or ``FileNotFoundError`` for an unknown name.
    """
    if isinstance(source, dict):
        return template_from_dict(source)
    text_source = str(source)
    path = Path(text_source)
    if not path.suffix and NAME_RE.match(text_source) and (BUILTIN_DIR / f"{text_source}.json").exists():
        path = BUILTIN_DIR / f"{text_source}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no template {text_source!r}: not a file, and not one of the built-in templates "
            f"({', '.join(builtin_names())})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TemplateError([f"(file {path.name}): not valid JSON: {exc}"]) from exc
    return template_from_dict(data)


def template_from_dict(data: dict) -> Template:
    """Validate a parsed template dict; raises ``TemplateError``."""
    c = _Checker()
    if not isinstance(data, dict):
        raise TemplateError(["(top level): must be a JSON object"])
    fmt = data.get("format")
    if fmt != FORMAT:
        c.fail("format", f"must be {FORMAT!r}, not {fmt!r}")
    name = c.get(data, "name", "", str)
    if name is not None and not NAME_RE.match(name):
        c.fail("name", "must be 1-64 lower-case letters, digits, '-', '_' or '.'")
    title = c.get(data, "title", "", str, default=name or "")
    pages = c.get(data, "pages", "", int, default=1, minimum=1)
    width = height = 0.0
    page = c.get(data, "page", "", dict)
    if page is not None:
        size = page.get("size")
        if size is not None:
            if not isinstance(size, str) or size.upper() not in PAGE_SIZES_MM:
                c.fail("page.size", f"must be one of {sorted(PAGE_SIZES_MM)}, not {size!r}")
            else:
                width, height = PAGE_SIZES_MM[size.upper()]
        else:
            width = c.get(page, "width_mm", "page", float, minimum=50) or 0.0
            height = c.get(page, "height_mm", "page", float, minimum=50) or 0.0

    def inside(path: str, x: float | None, y: float | None, margin: float = 0.0) -> None:
        if x is None or y is None or not width:
            return
        if not (margin <= x <= width - margin and margin <= y <= height - margin):
            c.fail(path, f"({x:g}, {y:g}) mm lies outside the {width:g} x {height:g} mm page")

    def page_no(obj: dict, path: str) -> int:
        p = c.get(obj, "page", path, int, default=1, minimum=1)
        if p is not None and pages is not None and p > pages:
            c.fail(f"{path}.page", f"is {p} but the template has {pages} page(s)")
        return p or 1

    marks: list[Mark] = []
    raw_marks = c.get(data, "marks", "", list)
    if raw_marks is not None:
        if len(raw_marks) != 4:
            c.fail("marks", f"must list exactly 4 corner marks, not {len(raw_marks)}")
        for i, m in enumerate(raw_marks):
            p = f"marks[{i}]"
            x, y = c.get(m, "x_mm", p, float), c.get(m, "y_mm", p, float)
            s = c.get(m, "size_mm", p, float, minimum=3)
            inside(p, x, y)
            if None not in (x, y, s):
                marks.append(Mark(x, y, s))

    def box(key: str) -> Box:
        raw = c.get(data, key, "", dict)
        if raw is None:
            return Box(0, 0, 0, 0)
        vals = [c.get(raw, k, key, float, minimum=0) for k in ("x_mm", "y_mm", "w_mm", "h_mm")]
        if None in vals:
            return Box(0, 0, 0, 0)
        b = Box(*vals)
        inside(key, b.x, b.y)
        inside(key, b.x + b.w, b.y + b.h)
        return b

    key = box("key")
    qr = box("qr")
    if qr.w and qr.w < 12:
        c.fail("qr.w_mm", f"must be at least 12 mm for the code to scan, not {qr.w:g}")
    diameter = c.get(data, "bubble_diameter_mm", "", float, default=4.4, minimum=2) or 4.4

    questions: list[QuestionBlock] = []
    digit_grids: list[DigitBlock] = []
    choices: list[ChoiceBlock] = []
    texts: list[TextBlock] = []
    seen_fields: dict[tuple[int, str], str] = {}

    def claim(field_name: str, page_index: int, path: str) -> None:
        if not FIELD_RE.match(field_name):
            c.fail(path, f"field name {field_name!r} must be letters, digits and '_'")
        if (page_index, field_name) in seen_fields:
            c.fail(path, f"field {field_name!r} is already defined by {seen_fields[(page_index, field_name)]}")
        seen_fields[(page_index, field_name)] = path

    for i, blk in enumerate(c.get(data, "blocks", "", list) or []):
        p = f"blocks[{i}]"
        kind = c.get(blk, "type", p, str)
        if kind is None:
            continue
        pg = page_no(blk, p)
        x, y = c.get(blk, "x_mm", p, float), c.get(blk, "y_mm", p, float)
        inside(p, x, y)
        if kind == "questions":
            first = c.get(blk, "first", p, int, default=1, minimum=1)
            count = c.get(blk, "count", p, int, minimum=1)
            options = c.labels(blk, "options", p, 2, 8)
            rows = c.get(blk, "rows", p, int, default=count, minimum=1)
            row_pitch = c.get(blk, "row_pitch_mm", p, float, minimum=diameter)
            opt_pitch = c.get(blk, "option_pitch_mm", p, float, minimum=diameter)
            col_pitch = c.get(blk, "column_pitch_mm", p, float, default=0.0, minimum=0)
            fmt_ = c.get(blk, "field_format", p, str, default="q{n}")
            multi = c.get(blk, "multiple_allowed", p, bool, default=False)
            if fmt_ is not None and "{n}" not in fmt_:
                c.fail(f"{p}.field_format", "must contain {n}")
                fmt_ = None
            if None in (first, count, rows, row_pitch, opt_pitch, col_pitch, fmt_, x, y) or not options:
                continue
            columns = -(-count // rows)
            if columns > 1 and col_pitch < len(options) * opt_pitch:
                c.fail(f"{p}.column_pitch_mm", "columns would overlap")
            block = QuestionBlock(pg, first, count, options, x, y, rows, row_pitch, opt_pitch, col_pitch, fmt_, multi)
            inside(p + " (last bubble)", x + (columns - 1) * col_pitch + (len(options) - 1) * opt_pitch,
                   y + (min(rows, count) - 1) * row_pitch)
            for n in range(first, first + count):
                claim(block.field_name(n), pg, p)
            questions.append(block)
        elif kind == "digits":
            fname = c.get(blk, "name", p, str)
            label = c.get(blk, "label", p, str, default=fname or "")
            digits = c.get(blk, "digits", p, int, minimum=1)
            values = c.labels(blk, "values", p, 2, 36, default=list("0123456789"))
            col_pitch = c.get(blk, "column_pitch_mm", p, float, minimum=diameter)
            row_pitch = c.get(blk, "row_pitch_mm", p, float, minimum=diameter)
            boxes = c.get(blk, "write_in_boxes", p, bool, default=True)
            if None in (fname, digits, col_pitch, row_pitch, x, y, label, boxes) or not values:
                continue
            if digits > 32:
                c.fail(f"{p}.digits", f"must be at most 32, not {digits}")
            claim(fname, pg, p)
            inside(p + " (last bubble)", x + (digits - 1) * col_pitch, y + (len(values) - 1) * row_pitch)
            digit_grids.append(DigitBlock(pg, fname, label, digits, x, y, col_pitch, row_pitch, values, boxes))
        elif kind == "choice":
            fname = c.get(blk, "name", p, str)
            label = c.get(blk, "label", p, str, default=fname or "")
            options = c.labels(blk, "options", p, 2, 8)
            opt_pitch = c.get(blk, "option_pitch_mm", p, float, minimum=diameter)
            if None in (fname, opt_pitch, x, y, label) or not options:
                continue
            claim(fname, pg, p)
            inside(p + " (last bubble)", x + (len(options) - 1) * opt_pitch, y)
            choices.append(ChoiceBlock(pg, fname, label, options, x, y, opt_pitch))
        elif kind == "text":
            text = c.get(blk, "text", p, str)
            size = c.get(blk, "size_pt", p, float, default=9.0, minimum=4)
            bold = c.get(blk, "bold", p, bool, default=False)
            if None in (text, size, x, y, bold):
                continue
            texts.append(TextBlock(pg, x, y, text, size, bold))
        else:
            c.fail(f"{p}.type", f"must be one of questions, digits, choice, text; not {kind!r}")

    if not (questions or digit_grids or choices) and not c.errors:
        c.fail("blocks", "has no bubbles to read")
    if c.errors:
        raise TemplateError(c.errors)
    return Template(
        name=name,
        title=title or name,
        page_width=width,
        page_height=height,
        pages=pages,
        marks=tuple(marks),
        key=key,
        qr=qr,
        bubble_diameter=diameter,
        questions=tuple(questions),
        digit_grids=tuple(digit_grids),
        choices=tuple(choices),
        texts=tuple(texts),
        version=1,
        source=data,
    )


def template_to_dict(t: Template) -> dict[str, Any]:
    """The template as its JSON dict (the inverse of ``template_from_dict``)."""
    blocks: list[dict[str, Any]] = []
    for q in t.questions:
        blocks.append({
            "type": "questions", "page": q.page, "first": q.first, "count": q.count,
            "options": list(q.options), "x_mm": q.x, "y_mm": q.y, "rows": q.rows,
            "row_pitch_mm": q.row_pitch, "option_pitch_mm": q.option_pitch,
            "column_pitch_mm": q.column_pitch, "field_format": q.field_format,
            "multiple_allowed": q.multiple_allowed,
        })
    for d in t.digit_grids:
        blocks.append({
            "type": "digits", "page": d.page, "name": d.name, "label": d.label, "digits": d.digits,
            "values": list(d.values), "x_mm": d.x, "y_mm": d.y, "column_pitch_mm": d.column_pitch,
            "row_pitch_mm": d.row_pitch, "write_in_boxes": d.write_in_boxes,
        })
    for ch in t.choices:
        blocks.append({
            "type": "choice", "page": ch.page, "name": ch.name, "label": ch.label,
            "options": list(ch.options), "x_mm": ch.x, "y_mm": ch.y, "option_pitch_mm": ch.option_pitch,
        })
    for tx in t.texts:
        blocks.append({"type": "text", "page": tx.page, "x_mm": tx.x, "y_mm": tx.y, "text": tx.text,
                       "size_pt": tx.size, "bold": tx.bold})
    return {
        "format": FORMAT,
        "name": t.name,
        "title": t.title,
        "page": {"width_mm": t.page_width, "height_mm": t.page_height},
        "pages": t.pages,
        "marks": [{"x_mm": m.x, "y_mm": m.y, "size_mm": m.size} for m in t.marks],
        "key": {"x_mm": t.key.x, "y_mm": t.key.y, "w_mm": t.key.w, "h_mm": t.key.h},
        "qr": {"x_mm": t.qr.x, "y_mm": t.qr.y, "w_mm": t.qr.w, "h_mm": t.qr.h},
        "bubble_diameter_mm": t.bubble_diameter,
        "blocks": blocks,
    }


def builtin_names() -> list[str]:
    """Names of the templates shipped with the engine."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


# ---------------------------------------------------------------- built-ins

MARK_SIZE = 7.0
MARK_INSET = 12.0  # mark centre from the page edge: survives a few mm cropped off
BUBBLE = 4.4
OPTION_PITCH = 6.2


def make_builtin(paper: str, questions: int, options: int) -> dict[str, Any]:
    """The JSON dict of a built-in template (A4 or LETTER, 20/50/100/200 questions).

    Each page holds at most 100 questions in up to four columns of 25, under a
    header with the title, name line, a 10-digit student-number grid, an exam
    version and the QR code. Longer tests continue on further pages, each page
    repeating the student-number grid so pages can be matched without a QR code.
    """
    width, height = PAGE_SIZES_MM[paper]
    per_page = 100
    pages = -(-questions // per_page)
    labels = "ABCDEFGH"[:options]
    name = f"{'a4' if paper == 'A4' else 'letter'}-{questions}q-{options}"
    title = f"{'A4' if paper == 'A4' else 'US Letter'}, {questions} questions, {options} options"
    m = MARK_INSET
    blocks: list[dict[str, Any]] = []
    left, right = m + 6.0, width - m - 6.0
    grid_top = 50.0
    q_top = 112.0
    q_bottom = height - m - 8.0
    for page in range(1, pages + 1):
        first = (page - 1) * per_page + 1
        count = min(per_page, questions - first + 1)
        blocks += [
            {"type": "text", "page": page, "x_mm": left, "y_mm": 20.0, "text": title, "size_pt": 13, "bold": True},
            {"type": "text", "page": page, "x_mm": left, "y_mm": 28.0,
             "text": f"Page {page} of {pages}.  Name: ______________________________", "size_pt": 10},
            {"type": "text", "page": page, "x_mm": left, "y_mm": 35.0,
             "text": "Use a dark pencil or pen. Fill the circle completely. Erase cleanly to change an answer.",
             "size_pt": 8},
            {"type": "text", "page": page, "x_mm": left, "y_mm": 40.0,
             "text": "Write your student number in the boxes and fill one circle per column. Do not fold.",
             "size_pt": 8},
            {"type": "digits", "page": page, "name": "student_number", "label": "Student number", "digits": 10,
             "x_mm": left + 3.0, "y_mm": grid_top + 8.0, "column_pitch_mm": 5.6, "row_pitch_mm": 5.0},
            {"type": "choice", "page": page, "name": "exam_version", "label": "Exam version",
             "options": list("ABCD"), "x_mm": left + 72.0, "y_mm": grid_top + 8.0, "option_pitch_mm": OPTION_PITCH},
        ]
        rows = 25 if count > 40 else max(1, min(count, max(10, -(-count // 2))))
        columns = -(-count // rows)
        row_pitch = min(7.0, (q_bottom - q_top) / max(rows - 1, 1))
        usable = right - left
        column_pitch = usable / columns if columns > 1 else 0.0
        column_pitch = min(column_pitch, 52.0) if columns > 1 else 0.0
        blocks.append({
            "type": "questions", "page": page, "first": first, "count": count, "options": list(labels),
            "x_mm": round(left + 9.0, 3), "y_mm": q_top, "rows": rows, "row_pitch_mm": round(row_pitch, 3),
            "option_pitch_mm": OPTION_PITCH, "column_pitch_mm": round(column_pitch, 3),
        })
    half = MARK_SIZE / 2
    return {
        "format": FORMAT,
        "name": name,
        "title": title,
        "page": {"size": paper},
        "pages": pages,
        "marks": [
            {"x_mm": m, "y_mm": m, "size_mm": MARK_SIZE},
            {"x_mm": width - m, "y_mm": m, "size_mm": MARK_SIZE},
            {"x_mm": width - m, "y_mm": height - m, "size_mm": MARK_SIZE},
            {"x_mm": m, "y_mm": height - m, "size_mm": MARK_SIZE},
        ],
        # The key bar beside the top-left mark breaks the page's symmetry so the
        # reader can tell a page turned 180 degrees without the QR code.
        "key": {"x_mm": m + half + 3.0, "y_mm": m - half, "w_mm": 10.0, "h_mm": 3.0},
        "qr": {"x_mm": width - m - 6.0 - 26.0, "y_mm": 18.0, "w_mm": 26.0, "h_mm": 26.0},
        "bubble_diameter_mm": BUBBLE,
        "blocks": blocks,
    }


def write_builtins() -> list[Path]:
    """Regenerate the built-in template files (run after changing ``make_builtin``)."""
    written = []
    for paper in ("A4", "LETTER"):
        for questions in (20, 50, 100, 200):
            for options in (4, 5):
                data = make_builtin(paper, questions, options)
                template_from_dict(data)  # never write an invalid one
                path = BUILTIN_DIR / f"{data['name']}.json"
                path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
                written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - maintenance helper
    for p in write_builtins():
        print(p)
