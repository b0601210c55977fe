"""What the results page shows, built from the exports' rows and statistics
(``exports.result_rows``, ``exports.items_json``, ``exports.summary_json``):
the table of students sorted and filtered, each question's result as a colour
and a symbol, and the item analysis with the key marked and the reasons a
question looks miskeyed."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Page, Paginator
from django.utils.safestring import mark_safe

from ..models import Sheet
from . import exports
from .models import Exam, SheetScore
from .services import compiled

#: Sortable columns besides the questions: parameter -> label.
COLUMNS = {"student": "Student", "name": "Name", "group": "Group", "version": "Version", "score": "Score",
           "source_file": "File"}
DEFAULT_SORT = "student"
#: Rows of the students' table per page: a class or two at once; the
#: downloads hold every row. Thousands of rows on one page took seconds.
ROWS_PER_PAGE = 200
#: ``?page=all``: every row on one page, to print the whole class.
ALL_ROWS = "all"

RIGHT, WRONG, BLANK, MULTIPLE = "right", "wrong", "blank", "multiple"
# Symbol per result: right answers need no letter (the key says which), the
# others show what was marked, so a black-and-white printout says it all.
RANK = {RIGHT: 0, MULTIPLE: 1, WRONG: 2, BLANK: 3}


@dataclass(frozen=True)
class Cell:
    state: str
    text: str
    title: str


@functools.lru_cache(maxsize=1024)
def cell(answer: str, right: bool | None) -> Cell:
    # Cached for the same reason as the answers themselves: one per cell of
    # the table, of a few dozen distinct values.
    if right:
        return Cell(RIGHT, "✓", f"right ({answer or 'dropped'})")
    if not answer:
        return Cell(BLANK, "–", "blank")
    if len(answer) > 1:
        return Cell(MULTIPLE, answer, f"multiple mark {answer}")
    return Cell(WRONG, answer, f"wrong: {answer}")


def read_sort(params, questions) -> tuple[str, bool]:
    """``?sort=`` (a column or a question) and ``?order=desc``, checked."""
    sort = params.get("sort") or DEFAULT_SORT
    if sort not in COLUMNS and sort not in questions:
        sort = DEFAULT_SORT
    return sort, params.get("order") == "desc"


def _sort_key(sort: str):
    if sort == "score":
        return lambda r: r["score"]
    if sort in COLUMNS:
        return lambda r: str(r[sort]).casefold()
    return lambda r: (RANK[r["cells"][sort].state], r["answers"].get(sort, ""))


def _has(sort: str):
    if sort == "score":
        return lambda r: r["score"] is not None
    if sort in COLUMNS:
        return lambda r: bool(r[sort])
    return lambda r: True


def table(exam: Exam, *, batch_id=None, group: str | None = None, sort: str = DEFAULT_SORT,
          descending: bool = False) -> list[dict[str, Any]]:
    """The results rows of ``exports.result_rows`` with a ``cells`` dict per
    question, sorted (rows without the value last, either way). The page
    shows them a page at a time (``page``)."""
    questions = list(compiled(exam).rules.questions)
    rows = []
    for row in exports.result_rows(exam, batch_id, group):
        row["cells"] = {q: cell(row["answers"].get(q, ""), row["right"].get(q)) for q in questions}
        rows.append(row)
    doubtful = to_review(exam, batch_id)
    for row in rows:
        row["to_review"] = row["sheet_id"] in doubtful
    has = _has(sort)
    present = sorted((r for r in rows if has(r)), key=_sort_key(sort), reverse=descending)
    return present + [r for r in rows if not has(r)]


def page(rows: list[dict[str, Any]], questions: list[str], number) -> Page:
    """One page of the sorted rows (``?page=``; out of range or not a number
    gives the nearest page; ``all``, every row on one page, to print), its
    rows given their cells as HTML."""
    per_page = max(len(rows), 1) if number == ALL_ROWS else ROWS_PER_PAGE
    page_obj = Paginator(rows, per_page).get_page(1 if number == ALL_ROWS else number)
    for row in page_obj.object_list:
        # One string per row: thousands of cells through the template
        # language would cost most of the page's time.
        row["cells_html"] = mark_safe("".join(
            f'<td class="r {c.state}" title="{escape(c.title)}">{escape(c.text)}</td>'
            for c in (row["cells"][q] for q in questions)))
    return page_obj


def page_links(page_obj: Page, sort: str, descending: bool, *, batch_id=None, group: str | None = None):
    """The pager's links (first, previous, next, last, and every row on one
    page), keeping the sort and the filter; ``None`` where there is no such
    page."""
    params = _query(sort, descending, batch_id, group)

    def link(number: int | str) -> str:
        return "?" + urlencode({**params, "page": str(number)})

    last = page_obj.paginator.num_pages
    return {
        "first": link(1) if page_obj.number > 1 else None,
        "previous": link(page_obj.previous_page_number()) if page_obj.has_previous() else None,
        "next": link(page_obj.next_page_number()) if page_obj.has_next() else None,
        "last": link(last) if page_obj.number < last else None,
        "all": link(ALL_ROWS),
    }


def to_review(exam: Exam, batch_id=None) -> set[int]:
    """Sheets (by first page) with a page still marked for review: their
    score may change once a person has looked."""
    scored = SheetScore.objects.filter(exam=exam)
    if batch_id is not None:
        scored = scored.filter(batch_id=batch_id)
    first_page = {page: first for first, pages in scored.values_list("sheet_id", "pages") for page in pages or [first]}
    flagged = Sheet.objects.filter(pk__in=list(first_page), needs_review=True).values_list("pk", flat=True)
    return {first_page[pk] for pk in flagged}


def groups(exam: Exam) -> list[str]:
    return sorted(g for g in exam.roster.values_list("group", flat=True).distinct() if g)


# ---------------------------------------------------------------- item analysis


def _hint_text(hint: dict[str, Any]) -> str:
    if hint["reason"] == "negative_discrimination":
        return (f"Negative discrimination ({hint['discrimination']:.2f}): the students who do best on the other "
                "questions get this one wrong more often.")
    return (f"Version {hint['version']}: {hint['answer']} was chosen by {hint['chosen']} sheets, more than the "
            f"{hint['right']} that got the question right.")


def items(exam: Exam, batch_id=None) -> dict[str, Any]:
    """The item analysis of ``items.json`` as rows for the page: per question
    its difficulty, discrimination, one bar per option (the key's marked) and
    the reasons it looks miskeyed; and the KR-20."""
    shape = compiled(exam)
    data = exports.items_json(exam, batch_id)
    hints: dict[str, list[str]] = {}
    for hint in exports.summary_json(exam, batch_id)["miskey_hints"]:
        hints.setdefault(hint["question"], []).append(_hint_text(hint))
    n = data["students"]
    rows = []
    for question, item in data["items"].items():
        keyed: dict[str, list[str]] = {}
        for version, key in shape.rules.keys.items():
            if question in key:
                keyed.setdefault(key[question], []).append(version)
        accepted = set(shape.rules.accepted.get(question, ()))
        options = []
        for label, count in item["options"].items():
            versions = keyed.get(label, [])
            options.append({
                "label": label, "count": count, "share": count / n if n else 0.0,
                "is_key": bool(versions) or label in accepted,
                "key_versions": versions if len(shape.rules.keys) > 1 else [],
            })
        other_keys = [f"{answer} ({', '.join(vs)})" if len(shape.rules.keys) > 1 else answer
                      for answer, vs in keyed.items() if answer not in item["options"]]
        rows.append({"question": question, "difficulty": item["difficulty"],
                     "discrimination": item["discrimination"], "options": options, "other_keys": other_keys,
                     "hints": hints.get(question, [])})
    return {"students": n, "kr20": data["kr20"], "rows": rows,
            "flagged": [r for r in rows if r["hints"]]}


def headers(sort: str, descending: bool, questions: list[str], *, batch_id=None, group: str | None = None):
    """The table's sortable headers: label, the link that sorts by it (the
    other way round when it is the current sort) and ``aria-sort``."""
    out = []
    for key in [*COLUMNS, *questions]:
        current = key == sort
        params = _query(key, current and not descending, batch_id, group)
        out.append({"key": key, "label": COLUMNS.get(key, key), "query": "?" + urlencode(params),
                    "question": key not in COLUMNS,
                    "aria_sort": ("descending" if descending else "ascending") if current else "none"})
    return out


def _query(sort: str, descending: bool, batch_id, group: str | None) -> dict[str, str]:
    """The table's parameters in a link: its sort, its order, the batch and
    the group filter."""
    params = {"sort": sort}
    if descending:
        params["order"] = "desc"
    if batch_id:
        params["batch"] = str(batch_id)
    if group:
        params["group"] = group
    return params
