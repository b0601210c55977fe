"""The exams' browser pages: the list, creating and editing an exam (its key
and rules, or an evaluation.json), its page (key, roster import, batches,
report, change log) and its results (per exam or per batch).

Thin function views like the batch pages: staff only (``staff_required``),
scoped to the user by ``services.get_exam_or_404`` (another user's exam is
404), the work done by ``services``, ``roster``, ``report`` and ``exports``.
The downloads are the API's own endpoints, which take the session login.
"""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ..web.auth import get_exam_batch_or_404
from ..web.views import staff_required
from . import changes, charts, exports, report, results, roster, services
from .forms import ExamForm, RosterForm, initial_from_exam, key_text, template_shape
from .models import Exam


def _exam_links(exam: Exam, batch_id=None) -> dict[str, str]:
    query = f"?batch={batch_id}" if batch_id else ""
    return {
        "page": reverse("batches:exam", args=[exam.pk]),
        "edit": reverse("batches:exam-edit", args=[exam.pk]),
        "results": reverse("batches:exam-results", args=[exam.pk]),
        "upload": reverse("batches:upload") + f"?exam={exam.pk}",
        "csv": reverse("batches:api-exam-results", args=[exam.pk]) + query,
        "xlsx": reverse("batches:api-exam-workbook", args=[exam.pk]) + query,
        "items_csv": reverse("batches:api-exam-items-csv", args=[exam.pk]) + query,
        "items_json": reverse("batches:api-exam-items", args=[exam.pk]) + query,
    }


# ---------------------------------------------------------------- list, create, edit


@require_GET
@staff_required
def exam_list(request):
    """The user's exams, newest first."""
    exams = (services.exams_for(request.user).annotate(roster_size=Count("roster", distinct=True),
                                                       sheets=Count("scores", distinct=True))
             .order_by("-created_at"))
    return render(request, "exams/list.html", {"exams": exams, "nav": "exams"})


def _form_page(request, form: ExamForm, exam: Exam | None, status: int = 200):
    return render(request, "exams/form.html", {"form": form, "exam": exam, "nav": "exams"}, status=status)


def _refreshed(request, exam: Exam | None) -> ExamForm | None:
    """The form again for another template (its key fields), from the
    parameters of the page (the template select's htmx GET, or the button
    that does the same without JavaScript)."""
    if "template" not in request.GET:
        return None
    initial = {k: v for k, v in request.GET.items() if k not in ("evaluation", "answer_key_csv")}
    return ExamForm(initial=initial, exam=exam)


@require_http_methods(["GET", "POST"])
@staff_required
def exam_create(request):
    """A new exam from the form (or an evaluation.json); every problem shown
    under its field."""
    if request.method == "GET":
        return _form_page(request, _refreshed(request, None) or ExamForm(), None)
    form = ExamForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            exam = services.create_exam(request.user, form.exam_json())
        except services.ExamError as exc:
            form.add_service_errors(exc.errors, exc.message)
        else:
            messages.success(request, f"Exam “{exam.name}” created.")
            return redirect("batches:exam", exam.pk)
    else:
        form.check_rules()
    return _form_page(request, form, None, status=422)


@require_http_methods(["GET", "POST"])
@staff_required
def exam_edit(request, exam_id):
    """The exam's key and rules again; saving re-scores every sheet and says how many."""
    exam = services.get_exam_or_404(request.user, exam_id)
    if request.method == "GET":
        return _form_page(request, _refreshed(request, exam) or ExamForm(initial=initial_from_exam(exam), exam=exam),
                          exam)
    form = ExamForm(request.POST, request.FILES, exam=exam)
    if form.is_valid():
        try:
            update = services.update_exam(exam, request.user, form.exam_json())
        except services.ExamError as exc:
            form.add_service_errors(exc.errors, exc.message)
        else:
            if update.change is None:
                messages.info(request, "Nothing changed.")
            elif update.rescored:
                messages.success(request, f"Saved. {update.rescored} sheet{'s' if update.rescored != 1 else ''} "
                                          "re-scored with the new key and rules.")
            else:
                messages.success(request, "Saved. No sheet needed re-scoring.")
            return redirect("batches:exam", exam.pk)
    else:
        form.check_rules()
    return _form_page(request, form, exam, status=422)


# ---------------------------------------------------------------- the exam's page


def _detail_context(request, exam: Exam, roster_form: RosterForm | None = None, roster_errors=None) -> dict:
    shape = template_shape(exam.template)
    questions = list(shape.questions) if shape else []
    rules = exam.rules or {}
    keys = [{"version": v, "text": key_text(k, questions), "count": len(k)}
            for v, k in (rules.get("keys") or {}).items()]
    try:
        max_score = services.compiled(exam).rules.max_score
        exam_questions = len(services.compiled(exam).rules.questions)
    except (FileNotFoundError, ValueError):
        max_score, exam_questions = None, None
    entries = list(exam.roster.order_by("student_number").values_list("student_number", "name", "group"))
    history = [{"change": c, "lines": changes.describe(c.old, c.new)}
               for c in exam.changes.select_related("user")[:50]]
    batches = exam.batches.order_by("-created_at")
    return {
        "exam": exam, "nav": "exams", "links": _exam_links(exam), "keys": keys, "max_score": max_score,
        "exam_questions": exam_questions, "initial": initial_from_exam(exam), "roster": entries,
        "roster_form": roster_form or RosterForm(), "roster_errors": roster_errors or [],
        "history": history, "batches": batches, "report": report.exam_report(exam),
    }


@require_GET
@staff_required
def exam_detail(request, exam_id):
    """An exam: its key and rules, roster, batches, report and change log."""
    exam = services.get_exam_or_404(request.user, exam_id)
    return render(request, "exams/detail.html", _detail_context(request, exam))


@require_POST
@staff_required
def exam_roster(request, exam_id):
    """A roster CSV imported: all rows or none; every bad row shown by line."""
    exam = services.get_exam_or_404(request.user, exam_id)
    form = RosterForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            done = roster.import_roster_csv(exam, form.cleaned_data["file"].read(),
                                            replace=form.cleaned_data["replace"])
        except roster.RosterError as exc:
            context = _detail_context(request, exam, form, exc.errors)
            return render(request, "exams/detail.html", context, status=422)
        parts = [f"{done.added} added", f"{done.updated} updated", f"{done.unchanged} unchanged"]
        text = f"Roster imported: {', '.join(parts)}."
        if done.rematched:
            text += f" {done.rematched} sheet{'s' if done.rematched != 1 else ''} matched again."
        messages.success(request, text)
        return redirect(reverse("batches:exam", args=[exam.pk]) + "#roster")
    return render(request, "exams/detail.html", _detail_context(request, exam, form), status=422)


# ---------------------------------------------------------------- results


@require_GET
@staff_required
def exam_results(request, exam_id):
    """Results of the exam or of one batch (``?batch=``): the students'
    table (``?sort=``, ``?order=desc``, ``?group=``, ``?page=``), the histogram and the
    item analysis. An htmx request gets only the table."""
    exam = services.get_exam_or_404(request.user, exam_id)
    batch = get_exam_batch_or_404(request, exam)
    batch_id = batch.pk if batch else None
    questions = list(services.compiled(exam).rules.questions)
    sort, descending = results.read_sort(request.GET, questions)
    all_groups = results.groups(exam)
    group = request.GET.get("group") or None
    if group not in all_groups:
        group = None
    rows = results.table(exam, batch_id=batch_id, group=group, sort=sort, descending=descending)
    page_obj = results.page(rows, questions, request.GET.get("page"))
    context = {
        "exam": exam, "batch": batch, "nav": "exams", "links": _exam_links(exam, batch_id), "page_obj": page_obj,
        "questions": questions, "columns": results.COLUMNS, "sort": sort, "descending": descending,
        "groups": all_groups, "group": group or "",
        "headers": results.headers(sort, descending, questions, batch_id=batch_id, group=group),
        "pager": results.page_links(page_obj, sort, descending, batch_id=batch_id, group=group),
    }
    if request.htmx:
        return render(request, "exams/results.html#results-table", context)
    summary = exports.summary_json(exam, batch_id)
    context.update(summary=summary, items=results.items(exam, batch_id),
                   histogram=charts.histogram_svg(summary["histogram"], title=f"Scores of {exam.name}"),
                   report=report.batch_report(batch) if batch else None)
    return render(request, "exams/results.html", context)
