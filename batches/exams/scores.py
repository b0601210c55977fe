"""Scoring the sheets of an exam's batches, and keeping the scores and the
statistics true after a correction or a change of key.

A batch uploaded for an exam is scored once its results are stored
(``score_batch``, called by the pipeline after loading_database). Its pages
are gathered into sheets: the pages of one student (same template and
student, from the QR code, else the student-number grid) make one sheet, the
k-th copy of each page going to the k-th sheet when a student's pages come
twice; a page with no student is a sheet of its own. Each sheet is matched to
the roster by that student number and scored with the key of the version its
pages read (the first page that read one). A sheet whose QR code names
another exam, or whose pages are of another template, is not scored
(``other_exam``); nor is one whose version has no key (``no_key``) or that
holds an answer which is not one of the options (``bad_answer``).

The exam's statistics (the sums of ``batches.scoring.items``) are saved on
the exam row. A correction re-scores its sheet and moves the sums by that
sheet's share, in the reviewer's transaction with the exam row locked; a
batch scored or a key changed counts every sheet of the exam again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from ..models import Answer, Batch, Sheet, SheetStatus
from ..scoring.items import ItemStatistics
from ..scoring.rules import canonical_answer
from ..scoring.scoring import score_sheets
from .models import Exam, RosterEntry, ScoreProblem, SheetScore
from .services import CompiledExam, compiled

logger = logging.getLogger(__name__)

UPDATED_FIELDS = ["student", "roster_entry", "version", "problem", "counted", "score", "max_score", "answers", "earned",
                  "right", "scored_at"]
SHEET_COLUMNS = ("pk", "index", "status", "template", "template_page", "student", "exam")


@dataclass
class Page:
    pk: int
    index: int
    template: str
    page: int
    student: str
    exam: str


@dataclass
class Gathered:
    """One student's sheet: its pages in page order, and what they say."""

    pages: list[Page]
    student: str = ""
    problem: str = ""
    version: str = ""
    answers: dict[str, str] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # "q7: 'Z'" answers that are not options


# ---------------------------------------------------------------- gathering pages into sheets


def _pages(batch_id, sheet_ids: Iterable[int] | None = None) -> list[Page]:
    rows = Sheet.objects.filter(batch_id=batch_id, status=SheetStatus.DONE)
    if sheet_ids is not None:
        rows = rows.filter(pk__in=list(sheet_ids))
    return [Page(pk, index, template or "", page or 1, student or "", exam or "")
            for pk, index, _status, template, page, student, exam in rows.order_by("index").values_list(*SHEET_COLUMNS)]


def group_pages(pages: Sequence[Page], pages_per_sheet: int) -> list[list[Page]]:
    """Pages gathered into sheets (see the module's doc), each in page order,
    the sheets in the order of their first page in the upload."""
    if pages_per_sheet <= 1:
        return [[p] for p in pages]
    by_student: dict[tuple[str, str], list[Page]] = defaultdict(list)
    alone: list[list[Page]] = []
    for p in pages:
        if p.student:
            by_student[(p.template, p.student)].append(p)
        else:
            alone.append([p])
    sheets: list[list[Page]] = list(alone)
    for members in by_student.values():
        copies: list[dict[int, Page]] = []
        for p in members:  # in upload order: the k-th copy of a page joins the k-th sheet
            target = next((c for c in copies if p.page not in c), None)
            if target is None:
                target = {}
                copies.append(target)
            target[p.page] = p
        sheets.extend([c[k] for k in sorted(c)] for c in copies)
    sheets.sort(key=lambda s: min(p.index for p in s))
    return sheets


def _read_answers(exam: Exam, shape: CompiledExam, sheets: list[list[Page]]) -> list[Gathered]:
    """Each sheet's student, version, problem and answers (from the answer rows,
    so corrections count)."""
    template = shape.template
    wanted = set(template.questions)
    if template.version_field:
        wanted.add(template.version_field)
    page_ids = [p.pk for s in sheets for p in s]
    values: dict[int, dict[str, str]] = defaultdict(dict)
    for i in range(0, len(page_ids), 2000):
        for sheet_id, name, value in (Answer.objects.filter(sheet_id__in=page_ids[i:i + 2000], field__in=wanted)
                                      .values_list("sheet_id", "field", "value")):
            values[sheet_id][name] = value
    exam_ref = str(exam.pk)
    gathered = []
    for pages in sheets:
        g = Gathered(pages, student=next((p.student for p in pages if p.student), ""))
        if any(p.exam and p.exam != exam_ref for p in pages) or any(p.template and p.template != exam.template
                                                                      for p in pages):
            g.problem = ScoreProblem.OTHER_EXAM
        for p in pages:
            mine = values.get(p.pk, {})
            if template.version_field and not g.version:
                g.version = (mine.get(template.version_field) or "").strip()
            for q in template.questions:
                if q in mine:
                    g.answers[q] = template.answer(q, mine[q])
        gathered.append(g)
    return gathered


def clean_answers(shape: CompiledExam, given: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """A sheet's answers to the exam's questions in the reader's spelling
    (``"DB"`` -> ``"BD"``), and the questions whose answer is not one of the
    options (the sheet is then not scored). An answer already in the
    reader's spelling is found in the scoring tables' codes at once."""
    clean: dict[str, str] = {}
    bad: list[str] = []
    for q, codes, opts in zip(shape.tables.questions, shape.tables.codes, shape.rules.questions.values(),
                              strict=True):
        value = given.get(q) or ""
        if value in codes:
            clean[q] = value
            continue
        canonical = canonical_answer(value, opts)
        if canonical is None:
            bad.append(f"{q}: {value!r}")
        else:
            clean[q] = canonical
    return clean, bad


def _check_answers(shape: CompiledExam, g: Gathered) -> dict[str, str]:
    clean, g.bad = clean_answers(shape, g.answers)
    if g.bad and not g.problem:
        g.problem = ScoreProblem.BAD_ANSWER
    return clean


# ---------------------------------------------------------------- scoring rows


def _score_rows(exam: Exam, shape: CompiledExam, gathered: list[Gathered], batch_id) -> list[SheetScore]:
    """Unsaved score rows for these sheets."""
    tables = shape.tables
    clean = [_check_answers(shape, g) for g in gathered]
    versions = [None if g.problem else (g.version or None) for g in gathered]
    scored = score_sheets(tables, clean, versions)
    roster = dict(RosterEntry.objects.filter(exam=exam).values_list("student_number", "pk"))
    now = timezone.now()
    rows = []
    for i, g in enumerate(gathered):
        problem = g.problem
        if not problem and scored.version[i] < 0:
            problem = ScoreProblem.NO_KEY
        ok = not problem
        rows.append(SheetScore(
            exam=exam, batch_id=batch_id, sheet_id=g.pages[0].pk, pages=[p.pk for p in g.pages], student=g.student,
            roster_entry_id=roster.get(g.student), version=g.version, problem=problem, counted=ok,
            score=float(scored.scores[i]) if ok else None, max_score=shape.rules.max_score, answers=g.answers,
            earned=[float(x) for x in scored.earned[i]] if ok else [],
            right=[bool(x) for x in scored.right[i]] if ok else [], scored_at=now))
    return rows


def _pages_per_sheet(shape: CompiledExam) -> int:
    return max(1, shape.template.pages)


def score_batch(batch: Batch) -> int:
    """Score every sheet of ``batch`` for its exam (replacing earlier scores of
    the batch) and count the exam's statistics again. Returns the number of
    sheets given a score row (0 for a batch with no exam)."""
    if batch.exam_id is None:
        return 0
    with transaction.atomic():
        exam = Exam.objects.select_for_update().get(pk=batch.exam_id)
        shape = compiled(exam)
        sheets = group_pages(_pages(batch.pk), _pages_per_sheet(shape))
        rows = _score_rows(exam, shape, _read_answers(exam, shape, sheets), batch.pk)
        SheetScore.objects.filter(batch_id=batch.pk).delete()
        SheetScore.objects.bulk_create(rows, batch_size=500)
        recount_statistics(exam, shape)
    scored = sum(r.counted for r in rows)
    logger.info("Batch %s scored for exam %s: %d sheets, %d scored", batch.pk, exam.pk, len(rows), scored)
    return len(rows)


def score_finished_batch(batch: Batch) -> None:
    """The pipeline's call once a batch's results are stored: score it when it
    was uploaded for an exam. Scoring never fails the batch: a fault is logged
    and noted on the batch, and the scores can be made again
    (``manage.py`` or a change of the exam's key)."""
    if batch.exam_id is None:
        return
    try:
        score_batch(batch)
    except Exception as exc:
        logger.exception("Scoring batch %s for exam %s failed", batch.pk, batch.exam_id)
        note = f"The sheets could not be scored for the exam ({type(exc).__name__}); change or save the exam to retry."
        Batch.objects.filter(pk=batch.pk).update(notes=[*(batch.notes or []), note])


# ---------------------------------------------------------------- statistics


def _scored_of(shape: CompiledExam, rows: Sequence[SheetScore] | Sequence[tuple]):
    """The ``ScoredSheets`` of saved rows (answers, version) that are counted."""
    questions = shape.rules.questions
    answers = [{q: a.get(q, "") for q in questions} for a, _v in rows]
    return score_sheets(shape.tables, answers, [v or None for _a, v in rows])


def statistics_of(exam: Exam, shape: CompiledExam | None = None, batch_id=None) -> ItemStatistics:
    """The statistics of the exam's counted sheets (of one batch when
    ``batch_id`` is given), counted from the saved answers."""
    shape = shape or compiled(exam)
    rows = SheetScore.objects.filter(exam=exam, counted=True)
    if batch_id is not None:
        rows = rows.filter(batch_id=batch_id)
    data = list(rows.values_list("answers", "version"))
    if not data:
        return ItemStatistics.empty(shape.tables)
    return ItemStatistics.of(shape.tables, _scored_of(shape, data))


def recount_statistics(exam: Exam, shape: CompiledExam | None = None) -> ItemStatistics:
    """Count the exam's statistics again from every counted sheet and save them."""
    stats = statistics_of(exam, shape)
    Exam.objects.filter(pk=exam.pk).update(statistics=stats.to_dict())
    exam.statistics = stats.to_dict()
    return stats


def counted_sheets(exam: Exam) -> int:
    return SheetScore.objects.filter(exam=exam, counted=True).count()


def exam_statistics(exam: Exam) -> ItemStatistics:
    """The exam's statistics: the saved sums when they still fit the rules and
    the sheets (a deleted batch takes its sheets away), else counted again."""
    shape = compiled(exam)
    if exam.statistics:
        try:
            stats = ItemStatistics.from_dict(shape.tables, exam.statistics)
        except (ValueError, KeyError):
            stats = None
        if stats is not None and stats.sheets == counted_sheets(exam):
            return stats
    with transaction.atomic():
        locked = Exam.objects.select_for_update().get(pk=exam.pk)
        return recount_statistics(locked, shape)


# ---------------------------------------------------------------- a correction


def _row_share(shape: CompiledExam, row: SheetScore):
    return _scored_of(shape, [(row.answers, row.version)])


def rescore_after_change(sheet_id: int) -> list[SheetScore]:
    """After a correction (or a new reading) of one page: score its sheet
    again and move the exam's statistics by that sheet's share, in the
    caller's transaction with the exam row locked. A corrected student number
    may move the page to another student's sheet: every sheet the page left or
    joined is scored again. Returns the sheet's score rows now (none when its
    batch has no exam)."""
    page = Sheet.objects.filter(pk=sheet_id).values("batch_id", "batch__exam_id").first()
    if page is None or page["batch__exam_id"] is None:
        return []
    batch_id = page["batch_id"]
    with transaction.atomic():
        exam = Exam.objects.select_for_update().get(pk=page["batch__exam_id"])
        try:
            shape = compiled(exam)
        except (FileNotFoundError, ValueError) as exc:
            # A template edited since the exam was made: the correction itself
            # must still be saved; the scores wait for the exam to be fixed
            # (saving it scores every sheet again).
            logger.warning("Exam %s cannot score sheet %s: %s", exam.pk, sheet_id, exc)
            return []
        stats = _saved_statistics(exam, shape)
        old = _rows_with_page(exam, batch_id, sheet_id)
        affected = {pk for row in old for pk in row.pages} | {sheet_id}
        now = _pages(batch_id, affected)
        me = next((p for p in now if p.pk == sheet_id), None)
        if me is not None and me.student and _pages_per_sheet(shape) > 1:
            # The sheet the page now belongs to, with its other pages.
            joined = SheetScore.objects.filter(exam=exam, batch_id=batch_id, student=me.student)
            for row in joined:
                if row.pk not in {o.pk for o in old}:
                    old.append(row)
                    affected |= set(row.pages)
            now = _pages(batch_id, affected)
        rows = _score_rows(exam, shape, _read_answers(exam, shape, group_pages(now, _pages_per_sheet(shape))),
                           batch_id)
        if stats is not None:
            for row in old:
                if row.counted:
                    stats.remove(_row_share(shape, row))
            for row in rows:
                if row.counted:
                    stats.add(_row_share(shape, row))
        _replace_rows(old, rows)
        if stats is None:
            recount_statistics(exam, shape)
        else:
            Exam.objects.filter(pk=exam.pk).update(statistics=stats.to_dict())
    return [r for r in rows if sheet_id in r.pages]


def _replace_rows(old: list[SheetScore], rows: list[SheetScore]) -> None:
    """Save a correction's rows: a sheet that kept its pages is updated in
    place (the usual case: no row deleted or inserted, so no foreign-key check
    on the page rows a reviewer may hold locked); any other is replaced."""
    kept = {(r.sheet_id, tuple(r.pages)): r for r in old}
    update = []
    for row in rows:
        before = kept.pop((row.sheet_id, tuple(row.pages)), None)
        if before is not None:
            row.pk = before.pk
            update.append(row)
    SheetScore.objects.filter(pk__in=[r.pk for r in kept.values()]).delete()
    SheetScore.objects.bulk_update(update, UPDATED_FIELDS)
    SheetScore.objects.bulk_create([r for r in rows if r.pk is None])


def _saved_statistics(exam: Exam, shape: CompiledExam) -> ItemStatistics | None:
    """The saved sums when they fit the rules and the sheets saved; None when
    they must be counted again."""
    if not exam.statistics:
        return None
    try:
        stats = ItemStatistics.from_dict(shape.tables, exam.statistics)
    except (ValueError, KeyError):
        return None
    return stats if stats.sheets == counted_sheets(exam) else None


def _rows_with_page(exam: Exam, batch_id, sheet_id: int) -> list[SheetScore]:
    first = list(SheetScore.objects.filter(exam=exam, sheet_id=sheet_id))
    if first:
        return first
    # A later page of a multi-page sheet: look through the batch's page lists.
    candidates = SheetScore.objects.filter(exam=exam, batch_id=batch_id).values_list("pk", "pages")
    pks = [pk for pk, pages in candidates if sheet_id in pages]
    return list(SheetScore.objects.filter(pk__in=pks))


# ---------------------------------------------------------------- a new key


def rescore_exam(exam: Exam) -> int:
    """Score every sheet of the exam again with its rules as saved (after a
    change of key or rules), in the caller's transaction, and count the
    statistics again. Returns the number of sheets scored again."""
    shape = compiled(exam)
    rows = list(SheetScore.objects.filter(exam=exam).order_by("pk"))
    if not rows:
        recount_statistics(exam, shape)
        return 0
    answers, versions, bad = [], [], []
    for row in rows:
        clean, wrong = clean_answers(shape, row.answers)
        answers.append(clean)
        bad.append(bool(wrong))
        keep = row.problem != ScoreProblem.OTHER_EXAM and not wrong
        versions.append(row.version or None if keep else None)
    scored = score_sheets(shape.tables, answers, versions)
    now = timezone.now()
    for i, row in enumerate(rows):
        if row.problem == ScoreProblem.OTHER_EXAM:
            problem = ScoreProblem.OTHER_EXAM
        elif bad[i]:
            problem = ScoreProblem.BAD_ANSWER
        elif scored.version[i] < 0:
            problem = ScoreProblem.NO_KEY
        else:
            problem = ScoreProblem.NONE
        ok = problem == ScoreProblem.NONE
        row.problem, row.counted = problem, ok
        row.score = float(scored.scores[i]) if ok else None
        row.max_score = shape.rules.max_score
        row.earned = [float(x) for x in scored.earned[i]] if ok else []
        row.right = [bool(x) for x in np.asarray(scored.right[i])] if ok else []
        row.scored_at = now
    _update_rows(rows, ["problem", "counted", "score", "max_score", "earned", "right", "scored_at"])
    # The statistics of the counted sheets, from the scores just made (a sheet
    # of another exam may carry a version the exam keys: left out by hand).
    stats = ItemStatistics.of(shape.tables, scored.subset(np.array([row.counted for row in rows], dtype=bool)))
    Exam.objects.filter(pk=exam.pk).update(statistics=stats.to_dict())
    exam.statistics = stats.to_dict()
    return len(rows)


def _update_rows(rows: Sequence[SheetScore], names: list[str]) -> None:
    """Write these fields of many score rows with one prepared UPDATE run for
    every row (``bulk_update``'s CASE over 2,000 rows took seconds). Values go
    through each field's own preparation, so JSON is stored as the backend
    stores it."""
    fields = [SheetScore._meta.get_field(n) for n in names]
    qn = connection.ops.quote_name
    sets = ", ".join(f"{qn(f.column)} = %s" for f in fields)
    sql = f"UPDATE {qn(SheetScore._meta.db_table)} SET {sets} WHERE {qn('id')} = %s"
    params = [[f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields] + [row.pk] for row in rows]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


# ---------------------------------------------------------------- roster


def match_roster(exam: Exam) -> int:
    """Match the exam's score rows to its roster again (after a roster import);
    returns the number of rows whose roster entry changed."""
    roster = dict(RosterEntry.objects.filter(exam=exam).values_list("student_number", "pk"))
    changed = []
    for row in SheetScore.objects.filter(exam=exam).only("pk", "student", "roster_entry_id"):
        entry = roster.get(row.student)
        if entry != row.roster_entry_id:
            row.roster_entry_id = entry
            changed.append(row)
    SheetScore.objects.bulk_update(changed, ["roster_entry"], batch_size=1000)
    return len(changed)
