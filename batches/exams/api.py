"""The exams' JSON API (paths fixed by the issue that asked for them; see
docs/exams.md). Thin function views: authenticate
(``auth.api_login_required``), scope to the user
(``services.get_exam_or_404``: another user's exam is 404, as batches are),
call a service, answer.

``?batch=<batch id>`` narrows results.csv, results.xlsx, items.json,
items.csv and summary to one batch of the exam.
"""

from __future__ import annotations

import json

from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ..uploads.accept import ServiceError, parse_bool
from ..web.auth import api_login_required, error_response, get_batch_or_404, get_exam_batch_or_404
from . import exports, report, roster, services
from .models import Exam

ROSTER_MAX_BYTES = 10 * 1024 * 1024


def _links(request, exam: Exam) -> dict[str, str]:
    def url(name: str) -> str:
        return request.build_absolute_uri(reverse(name, args=[exam.pk]))

    return {"url": url("batches:api-exam"), "results_url": url("batches:api-exam-results"),
            "workbook_url": url("batches:api-exam-workbook"), "items_url": url("batches:api-exam-items"),
            "items_csv_url": url("batches:api-exam-items-csv"), "report_url": url("batches:api-exam-report"),
            "roster_url": url("batches:api-exam-roster")}


def _json_request(request) -> tuple[object, JsonResponse | None]:
    try:
        return json.loads(request.body or b""), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, error_response(400, f"the body is not JSON ({exc})")


def _refused(exc: services.ExamError) -> JsonResponse:
    return error_response(exc.status, exc.message, errors=exc.errors)


def _batch_id(request, exam: Exam):
    """The ``?batch=`` of a download, as a batch id (see ``get_exam_batch_or_404``)."""
    batch = get_exam_batch_or_404(request, exam)
    return batch.pk if batch else None


def _attachment(content, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


# ---------------------------------------------------------------- exams


@require_http_methods(["GET", "POST"])
@api_login_required
def exam_collection(request):
    """``POST /api/exams``: a new exam (201 ``{"exam_id", "url"}``); ``GET``: the user's exams."""
    if request.method == "GET":
        exams = services.exams_for(request.user).order_by("-created_at")
        return JsonResponse({"exams": [{"exam_id": e.pk, "name": e.name, "template": e.template,
                                        "url": request.build_absolute_uri(reverse("batches:api-exam", args=[e.pk]))}
                                       for e in exams]})
    data, failure = _json_request(request)
    if failure:
        return failure
    try:
        exam = services.create_exam(request.user, data)
    except services.ExamError as exc:
        return _refused(exc)
    return JsonResponse({"exam_id": exam.pk, "url": _links(request, exam)["url"]}, status=201)


@require_http_methods(["GET", "PUT"])
@api_login_required
def exam_detail(request, exam_id):
    """``GET /api/exams/{id}``: the exam; ``PUT``: the whole exam again (name,
    template, key and rules), every sheet scored again before the answer."""
    exam = services.get_exam_or_404(request.user, exam_id)
    if request.method == "PUT":
        data, failure = _json_request(request)
        if failure:
            return failure
        try:
            update = services.update_exam(exam, request.user, data)
        except services.ExamError as exc:
            return _refused(exc)
        exam = update.exam
        body = services.exam_json(exam, _links(request, exam))
        body.update(rescored=update.rescored, change_id=update.change.pk if update.change else None)
        return JsonResponse(body)
    return JsonResponse(services.exam_json(exam, _links(request, exam)))


@require_POST
@api_login_required
def exam_evaluation(request, exam_id):
    """``POST /api/exams/{id}/evaluation``: an OMRChecker evaluation.json as the
    key and rules: ``{"evaluation": {...}, "answer_key_csv": "...", "version": "A"}``,
    or the evaluation.json itself as the body."""
    exam = services.get_exam_or_404(request.user, exam_id)
    data, failure = _json_request(request)
    if failure:
        return failure
    if isinstance(data, dict) and "evaluation" not in data:
        data = {"evaluation": data}
    if not isinstance(data, dict):
        return error_response(400, "the body must be a JSON object")
    try:
        update = services.import_evaluation_file(exam, request.user, data["evaluation"],
                                                 answer_key_csv=data.get("answer_key_csv"), version=data.get("version"))
    except services.ExamError as exc:
        return _refused(exc)
    body = services.exam_json(update.exam, _links(request, update.exam))
    body.update(rescored=update.rescored)
    return JsonResponse(body)


@require_GET
@api_login_required
def exam_changes(request, exam_id):
    """``GET /api/exams/{id}/changes``: the log of changes of key and rules, newest first."""
    exam = services.get_exam_or_404(request.user, exam_id)
    changes = [{"change_id": c.pk, "user": c.user.get_username() if c.user else None,
                "created_at": c.created_at.isoformat(), "old": c.old, "new": c.new, "rescored": c.rescored}
               for c in exam.changes.select_related("user")]
    return JsonResponse({"changes": changes})


# ---------------------------------------------------------------- roster


@require_http_methods(["GET", "POST"])
@api_login_required
def exam_roster(request, exam_id):
    """``GET /api/exams/{id}/roster``: the roster; ``POST``: a roster CSV (the
    body, or the multipart field ``file``; ``replace=true`` empties the roster
    first). 400 lists every bad row by line; nothing is imported then."""
    exam = services.get_exam_or_404(request.user, exam_id)
    if request.method == "GET":
        rows = exam.roster.order_by("student_number").values("student_number", "name", "group")
        return JsonResponse({"roster": list(rows)})
    upload = request.FILES.get("file")
    data = upload.read(ROSTER_MAX_BYTES + 1) if upload is not None else request.body
    if len(data) > ROSTER_MAX_BYTES:
        return error_response(413, f"the roster is over {ROSTER_MAX_BYTES // (1024 * 1024)} MB")
    try:
        replace = parse_bool(request.GET.get("replace") or request.POST.get("replace"), default=False)
        result = roster.import_roster_csv(exam, data, replace=replace)
    except ServiceError as exc:
        return error_response(exc.status, exc.message.replace("has_qr", "replace"))
    except roster.RosterError as exc:
        return error_response(400, f"the roster was not imported: {len(exc.errors)} bad rows" if len(exc.errors) > 1
                              else f"the roster was not imported: {exc.errors[0]}", errors=exc.errors)
    return JsonResponse({"added": result.added, "updated": result.updated, "unchanged": result.unchanged,
                         "rematched": result.rematched, "header": result.header,
                         "roster": exam.roster.count()})


# ---------------------------------------------------------------- results


@require_GET
@api_login_required
def exam_results_csv(request, exam_id):
    """``GET /api/exams/{id}/results.csv``: one row per sheet read."""
    exam = services.get_exam_or_404(request.user, exam_id)
    text = exports.results_csv_text(exam, _batch_id(request, exam))
    return _attachment(text.encode("utf-8-sig"), "text/csv; charset=utf-8", f"exam-{exam.pk}-results.csv")


@require_GET
@api_login_required
def exam_results_workbook(request, exam_id):
    """``GET /api/exams/{id}/results.xlsx``: results, item analysis and summary as a workbook."""
    exam = services.get_exam_or_404(request.user, exam_id)
    data = exports.results_workbook(exam, _batch_id(request, exam))
    return _attachment(data, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                       f"exam-{exam.pk}-results.xlsx")


@require_GET
@api_login_required
def exam_items(request, exam_id):
    """``GET /api/exams/{id}/items.json``: the item analysis."""
    exam = services.get_exam_or_404(request.user, exam_id)
    return JsonResponse(exports.items_json(exam, _batch_id(request, exam)))


@require_GET
@api_login_required
def exam_items_csv(request, exam_id):
    """``GET /api/exams/{id}/items.csv``: the item analysis as CSV."""
    exam = services.get_exam_or_404(request.user, exam_id)
    text = exports.items_csv_text(exam, _batch_id(request, exam))
    return _attachment(text.encode("utf-8-sig"), "text/csv; charset=utf-8", f"exam-{exam.pk}-items.csv")


@require_GET
@api_login_required
def exam_summary(request, exam_id):
    """``GET /api/exams/{id}/summary``: mean, spread, histogram, KR-20, miskey hints."""
    exam = services.get_exam_or_404(request.user, exam_id)
    return JsonResponse(exports.summary_json(exam, _batch_id(request, exam)))


@require_GET
@api_login_required
def exam_report(request, exam_id):
    """``GET /api/exams/{id}/report``: unknown students, students with two
    sheets, roster students with no sheet, missing pages, sheets not scored."""
    exam = services.get_exam_or_404(request.user, exam_id)
    return JsonResponse(report.exam_report(exam))


@require_GET
@api_login_required
def batch_scores(request, batch_id):
    """``GET /api/batches/{id}/scores``: a batch's sheets scored, its summary and its report."""
    batch = get_batch_or_404(request.user, batch_id)
    if batch.exam_id is None:
        return error_response(404, "this batch was not uploaded for an exam")
    exam = batch.exam
    return JsonResponse({
        "batch_id": str(batch.pk), "exam_id": exam.pk, "exam_url": _links(request, exam)["url"],
        "summary": exports.summary_json(exam, batch.pk),
        "report": report.batch_report(batch),
        "sheets": list(exports.result_rows(exam, batch.pk)),
    })
