"""The browser pages: batch list, upload, batch detail and its progress stream,
and the sheet overlay image for the review screens.

Thin function views: check the user (``staff_required``), scope to their
batches (``auth.get_batch_or_404``, the one access helper, which answers 404
for another user's batch), call a service, render. htmx requests get the
partial they asked for.
"""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import user_passes_test
from django.core.paginator import Paginator
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import sheet_templates, stream_limits, streams
from ..exams.report import batch_report
from ..models import ProgressEvent, Sheet, Stage
from ..omr.imageio import ImageError
from ..pipeline import fanout
from ..review import overlay
from ..uploads import accept
from .auth import batches_for, get_batch_or_404
from .forms import ACCEPT, UploadForm
from .timeline import progress_state

logger = logging.getLogger(__name__)

BATCHES_PER_PAGE = 25


def _is_staff(user) -> bool:
    return user.is_active and user.is_staff


#: Pages are for staff: anyone else is sent to the login page (which says why
#: when they are logged in already). Works for sync and async views.
staff_required = user_passes_test(_is_staff, login_url="batches:login")


def page_links(batch) -> dict:
    """URLs the batch pages and their partials link to (no request needed, so
    the page stream can render partials too)."""
    return {
        "detail": reverse("batches:detail", args=[batch.pk]),
        "stream": reverse("batches:progress-stream", args=[batch.pk]),
        "csv": reverse("batches:api-results", args=[batch.pk]),
        "review": reverse("batches:batch-review", args=[batch.pk]),
        "upload": reverse("batches:upload"),
        "exam_results": (reverse("batches:exam-results", args=[batch.exam_id]) + f"?batch={batch.pk}"
                         if batch.exam_id else ""),
    }


# ---------------------------------------------------------------- list


@require_GET
@staff_required
def batch_list(request):
    """Every batch of the user, newest first; running rows poll themselves."""
    batches = batches_for(request.user).order_by("-created_at")
    page_obj = Paginator(batches, BATCHES_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "batches/list.html", {"page_obj": page_obj, "nav": "list"})


@require_GET
@staff_required
def batch_row(request, batch_id):
    """One row of the batch list (what a running row polls for)."""
    batch = get_batch_or_404(request.user, batch_id)
    return render(request, "batches/list.html#batch-row", {"batch": batch})


# ---------------------------------------------------------------- upload


@require_http_methods(["GET", "POST"])
@staff_required
def upload(request):
    """The upload form, a plain multipart POST: a refused upload comes back as
    the form with the reason (422); an accepted one goes to the batch's page.
    With JavaScript the page sends the file through tus instead (/api/uploads/)."""
    form = UploadForm(request.POST or None, request.FILES or None, user=request.user,
                      initial={"exam": request.GET.get("exam")} if request.GET.get("exam") else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                # An exam brings its own template (the one its key is for).
                exam, template = accept.exam_for_upload(request.user, data["exam"], "" if data["exam"] else data["template"])
                batch = accept.create_batch(request.user, data["file"], filename=data["file"].name,
                                              template=template, has_qr=data["has_qr"], exam=exam)
            except accept.ServiceError as exc:
                form.add_error("file", exc.message[:1].upper() + exc.message[1:] + ".")
            else:
                target = reverse("batches:detail", args=[batch.pk])
                if request.htmx:
                    response = HttpResponse(status=204)
                    response["HX-Redirect"] = target
                    return response
                return redirect(target, permanent=False)
        status = 422
    template = "batches/upload.html#upload-form" if request.htmx else "batches/upload.html"
    context = {"form": form, "accept": ACCEPT, "max_bytes": settings.OMR_MAX_UPLOAD_BYTES, "nav": "upload",
               # static/js/upload.js sends the file through tus in PATCHes this large.
               "chunk_bytes": min(settings.OMR_TUS_BROWSER_CHUNK_BYTES, settings.OMR_TUS_MAX_CHUNK_BYTES)}
    return render(request, template, context, status=status)


# ---------------------------------------------------------------- detail and its stream


@require_GET
@staff_required
def batch_detail(request, batch_id):
    """A batch's page: its progress, live while it runs, and its results."""
    batch = get_batch_or_404(request.user, batch_id)
    events = list(ProgressEvent.objects.filter(batch=batch).order_by("id"))
    state = progress_state(batch, events, now=timezone.now())
    exam_report = batch_report(batch) if batch.exam_id and state.is_completed else None
    retry_sheets = len(fanout.server_failures(batch.pk)) if batch.stage == Stage.COMPLETED else 0
    reads_qr = sheet_templates.reads_qr(batch.template, batch.has_qr)
    # Pages identified by QR code are read with the template their code names;
    # the batch's own is only for pages without one.
    qr_templates = (list(Sheet.objects.filter(batch=batch).exclude(template="").order_by("template")
                         .values_list("template", flat=True).distinct()) if reads_qr else [])
    return render(request, "batches/detail.html", {"batch": batch, "state": state, "links": page_links(batch),
                                                   "report": exam_report, "retry_sheets": retry_sheets,
                                                   "reads_qr": reads_qr, "qr_templates": qr_templates})


@require_POST
@staff_required
def batch_retry(request, batch_id):
    """The page's retry: a failed batch again from the start, or the sheets of a
    completed batch that the server failed by its own trouble read again."""
    batch = get_batch_or_404(request.user, batch_id)
    try:
        accept.retry_batch(batch)
    except accept.ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("batches:detail", batch_id=batch.pk)


def _sse(event: str, html: str, event_id: int | None = None) -> bytes:
    # Every line of the payload needs its own "data:" prefix; the browser joins
    # them with newlines again.
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in (html.strip() or " ").splitlines()]
    return ("\n".join(lines) + "\n\n").encode()


def _progress_frame(batch, events, links, announce: bool, extra_html: str = "") -> tuple[bytes, object]:
    state = progress_state(batch, events, now=timezone.now())
    html = render_to_string("batches/detail.html#progress", {"state": state, "links": links, "announce": announce})
    return _sse("progress", html + extra_html, state.event_id), state


def _exam_report_oob(batch) -> str:
    """The batch's exam report as an out-of-band swap of the page's
    ``#exam-section``: a page drawn while the batch ran has none yet, and the
    report exists once the batch completes (it is scored before cleanup)."""
    try:
        report = batch_report(batch)
    finally:
        streams.release_connection()
    html = render_to_string("exams/report.html", {"report": report})
    return f'<div class="exam-section" id="exam-section" hx-swap-oob="true">{html}</div>'


def _load(user, batch_id):
    """The user's batch and its events, for the page stream. The stream lives
    for minutes: like ``streams``, it holds no database connection between reads."""
    try:
        batch = get_batch_or_404(user, batch_id)
        return batch, list(ProgressEvent.objects.filter(batch=batch).order_by("id"))
    finally:
        streams.release_connection()


def _refresh(batch) -> None:
    try:
        batch.refresh_from_db()
    finally:
        streams.release_connection()


async def _progress_frames(batch, events, last_event_id: int = 0):
    """The page stream: the current state at once (unless the page already has
    it: ``last_event_id``), then a new state for every event, then ``done``.
    Each frame is the whole progress partial, so a page that connects late or
    reconnects needs one frame, not the whole log. A stream that lived its time
    ends with a ``retry:`` instead of ``done``, and the browser's EventSource
    reconnects with the ``Last-Event-ID`` of the state it shows."""
    links = page_links(batch)
    yield f": progress of batch {batch.pk}\n\n".encode()
    state = progress_state(batch, events, now=timezone.now())
    if not last_event_id or state.event_id is None or state.event_id > last_event_id:
        frame, state = _progress_frame(batch, events, links, announce=False)
        yield frame
    if not state.is_finished:
        last_stage = state.stage
        async for event in streams.follow_events(batch.pk, events[-1].id if events else 0,
                                                 lifetime=streams.stream_lifetime()):
            if event is streams.EXPIRED:
                yield streams.EXPIRED_FRAME
                return
            if event is None:
                yield streams.KEEPALIVE_FRAME
                continue
            events.append(event)
            report = ""
            if event.is_terminal:
                # The final counts and the error live on the batch row.
                await sync_to_async(_refresh)(batch)
                if batch.exam_id and batch.stage == Stage.COMPLETED:
                    report = await sync_to_async(_exam_report_oob)(batch)
            frame, state = _progress_frame(batch, events, links, announce=event.stage != last_stage,
                                           extra_html=report)
            last_stage = event.stage
            yield frame
    # Named after the terminal stage; the page closes its EventSource on it.
    yield _sse("done", state.stage)


@require_GET
@staff_required
async def progress_stream(request, batch_id):
    """``GET /batches/<id>/progress-stream``: the batch page's SSE stream of
    rendered progress partials (event ``progress``), ending with ``done``.
    ``Last-Event-ID`` (or ``?last_event_id=``): the state the page shows.
    429 when the user holds ``OMR_MAX_STREAMS_PER_USER`` streams."""
    user = await request.auser()
    batch, events = await sync_to_async(_load)(user, batch_id)
    slot = await stream_limits.take_slot(user.pk)
    if slot is None:
        return stream_limits.too_many_streams_text()
    frames = _progress_frames(batch, events, streams.last_event_id(request))
    response = StreamingHttpResponse(streams.serve(frames, slot), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must not hold the stream
    return response


# ---------------------------------------------------------------- sheet image


@require_GET
@staff_required
@never_cache
def sheet_overlay(request, batch_id, index: int):
    """A sheet's page with the detected marks drawn over it, as a fresh PNG
    (never the uploaded file itself)."""
    batch = get_batch_or_404(request.user, batch_id)
    sheet = get_object_or_404(Sheet, batch=batch, index=index)
    try:
        data = sheet.read_image()
        png = overlay.render_overlay_png(data, sheet.reading)
    except (OSError, ImageError) as exc:
        logger.info("No overlay for sheet %s of batch %s: %s", index, batch.pk, exc)
        return HttpResponse("This page image cannot be shown.", status=404, content_type="text/plain; charset=utf-8")
    response = HttpResponse(png, content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = f'inline; filename="sheet-{index}.png"'
    response["Cache-Control"] = "private, no-store"
    return response
