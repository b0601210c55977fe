"""The print pages: an exam's print section (roster PDF, walk-in sheets, the
jobs a worker builds and their progress) and blank sheets of any template.

A print of up to ``OMR_PRINT_IN_REQUEST_PAGES`` pages is answered with the
PDF itself. A larger one becomes a ``PrintJob`` built by a worker; its row on
the page polls a small status partial every second (as running batch rows of
the batch list do) until it is ready, then offers the download.
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from ..exams.models import RosterEntry
from ..exams.services import get_exam_or_404
from ..web.views import staff_required
from . import services
from .forms import BlankPrintForm, ExamPrintForm
from .models import PrintState

RECENT_JOBS = 5


def _pdf_response(plan: services.PrintPlan) -> HttpResponse:
    response = HttpResponse(services.pdf_bytes(plan), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{plan.filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def print_context(user, exam, form=None, error: str = "") -> dict:
    """What the print section (``exams/print.html#print-section``) needs, for
    the exam page to include it as well."""
    return {
        "exam": exam,
        "print_form": form or ExamPrintForm(),
        "print_error": error,
        "roster_count": RosterEntry.objects.filter(exam=exam).count(),
        "print_jobs": list(services.jobs_for(user).filter(exam=exam)[:RECENT_JOBS]),
        "in_request_pages": settings.OMR_PRINT_IN_REQUEST_PAGES,
        "print_url": reverse("batches:exam-print", args=[exam.pk]),
    }


@require_http_methods(["GET", "POST"])
@staff_required
def exam_print(request, exam_id: int):
    """``/exams/<id>/print``: GET the print section; POST prints (the PDF
    itself when small, else a job and back to this page, 303)."""
    exam = get_exam_or_404(request.user, exam_id)
    form = ExamPrintForm(request.POST or None)
    status, error = 200, ""
    if request.method == "POST":
        if form.is_valid():
            options = {"roster": form.cleaned_data["roster"], "order": form.cleaned_data["order"],
                       "blanks": form.cleaned_data["blanks"] or 0}
            try:
                plan = services.exam_plan(exam, **options)
            except services.PrintError as exc:
                error, status = exc.message[:1].upper() + exc.message[1:] + ".", exc.status
            else:
                if services.fits_in_request(plan):
                    return _pdf_response(plan)
                services.start_exam_job(request.user, exam, plan, options)
                return redirect(reverse("batches:exam-print", args=[exam.pk]), permanent=False)
        else:
            status = 400
    context = print_context(request.user, exam, form, error)
    return render(request, "exams/print.html", context, status=status)


@require_GET
@staff_required
def print_job_status(request, exam_id: int, job_id):
    """One job's row (what a running job's row polls for)."""
    exam = get_exam_or_404(request.user, exam_id)
    job = services.get_job_or_404(request.user, job_id, exam)
    return render(request, "exams/print.html#print-job", {"job": job, "exam": exam})


@require_GET
@staff_required
def print_job_download(request, exam_id: int, job_id):
    """The PDF a worker built."""
    exam = get_exam_or_404(request.user, exam_id)
    job = services.get_job_or_404(request.user, job_id, exam)
    if job.state != PrintState.DONE or not job.file or not default_storage.exists(job.file):
        return HttpResponse("This PDF is not ready, or has expired: print it again.", status=404,
                            content_type="text/plain; charset=utf-8")
    response = FileResponse(default_storage.open(job.file, "rb"), as_attachment=True, filename=job.filename,
                            content_type="application/pdf")
    response["Cache-Control"] = "private, no-store"
    return response


@require_http_methods(["GET", "POST"])
@staff_required
def blank_print(request):
    """``/print/blank``: blank sheets of any template, for no exam (a
    template's stock: no exam or student in the QR code). Always built in the
    request: every copy has the same QR code, drawn once."""
    initial = {"template": request.GET["template"]} if request.GET.get("template") else None
    form = BlankPrintForm(request.POST or None, initial=initial)
    status, error = 200, ""
    if request.method == "POST":
        if form.is_valid():
            try:
                return _pdf_response(services.blank_plan(form.cleaned_data["template"], form.cleaned_data["count"]))
            except services.PrintError as exc:
                error, status = exc.message[:1].upper() + exc.message[1:] + ".", exc.status
        else:
            status = 400
    return render(request, "exams/print_blank.html", {"form": form, "print_error": error, "nav": "upload"},
                  status=status)
