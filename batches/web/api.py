"""The JSON API and the progress stream (docs/contracts.md, "URLs").

Thin function views: authenticate (``auth.api_login_required``), scope to the
user (``auth.get_batch_or_404``), call a service, answer JSON.
"""

from __future__ import annotations

import datetime
import time

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import stream_limits, streams
from ..models import Batch, Stage, WorkerHeartbeat
from ..uploads import accept
from .auth import api_login_required, batches_for, error_response, get_batch_or_404, token_user


def batch_links(request, batch: Batch) -> dict:
    """Absolute URLs of a batch's status, stream and results."""
    def url(name: str) -> str:
        return request.build_absolute_uri(reverse(name, args=[batch.pk]))

    return {
        "status_url": url("batches:api-detail"),
        "stream_url": url("batches:api-stream"),
        "results_url": url("batches:api-results"),
    }


def batch_json(request, batch: Batch) -> dict:
    """A batch as the API shows it."""
    def iso(value):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None

    return {
        "batch_id": str(batch.pk),
        "stage": batch.stage,
        "stage_label": Stage(batch.stage).label,
        "finished": batch.is_finished,
        "template": batch.template,
        "has_qr": batch.has_qr,
        "exam_id": batch.exam_id,
        "original_filename": batch.original_filename,
        "size": batch.size,
        "sha256": batch.sha256,
        "sheets_total": batch.sheets_total,
        "sheets_processed": batch.sheets_processed,
        "sheets_failed": batch.sheets_failed,
        "sheets_needs_review": batch.sheets_needs_review,
        "overall_percentage": round(batch.overall_percentage, 1),
        "created_at": iso(batch.created_at),
        "started_at": iso(batch.started_at),
        "finished_at": iso(batch.finished_at),
        "elapsed_seconds": batch.elapsed_seconds(),
        "error": batch.error,
        "results_ready": batch.stage == Stage.COMPLETED and bool(batch.results_csv),
        **batch_links(request, batch),
    }


@require_POST
@api_login_required
def upload(request):
    """``POST /api/batches/upload``: multipart ``file``, ``has_qr``, ``template``, ``exam``."""
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > settings.OMR_MAX_UPLOAD_BYTES + 1024 * 1024:
        return error_response(413, f"the upload is over the limit of {accept.upload_limit_text()}")
    upload_file = request.FILES.get("file")
    if upload_file is None:
        return error_response(400, "no file: send the scans as the multipart field 'file'")
    try:
        has_qr = accept.parse_bool(request.POST.get("has_qr"), default=True)
        exam, template = accept.exam_for_upload(request.user, request.POST.get("exam"), request.POST.get("template", ""))
        batch = accept.create_batch(request.user, upload_file, filename=upload_file.name,
                                      template=template, has_qr=has_qr, exam=exam)
    except accept.ServiceError as exc:
        return error_response(exc.status, exc.message)
    return JsonResponse({"batch_id": str(batch.pk), **batch_links(request, batch)}, status=202)


@require_GET
@api_login_required
def batch_list(request):
    """``GET /api/batches``: the user's batches, newest first (``?limit=&offset=``)."""
    try:
        limit = max(1, min(200, int(request.GET.get("limit", 50))))
        offset = max(0, int(request.GET.get("offset", 0)))
    except ValueError:
        return error_response(400, "limit and offset must be whole numbers")
    rows = list(batches_for(request.user).order_by("-created_at")[offset:offset + limit + 1])
    more = len(rows) > limit
    body = {"batches": [batch_json(request, b) for b in rows[:limit]], "next": None}
    if more:
        body["next"] = request.build_absolute_uri(f"{reverse('batches:api-list')}?limit={limit}&offset={offset + limit}")
    return JsonResponse(body)


@require_http_methods(["GET", "DELETE"])
@api_login_required
def batch_detail(request, batch_id):
    """``GET /api/batches/{id}``: the batch; ``DELETE``: delete it and its files."""
    batch = get_batch_or_404(request.user, batch_id)
    if request.method == "DELETE":
        accept.delete_batch(batch)
        return HttpResponse(status=204)
    return JsonResponse(batch_json(request, batch))


@require_POST
@api_login_required
def batch_retry(request, batch_id):
    """``POST /api/batches/{id}/retry``: run a failed batch again, or read again the
    sheets of a completed batch that the server failed by its own trouble."""
    batch = get_batch_or_404(request.user, batch_id)
    try:
        batch = accept.retry_batch(batch)
    except accept.ServiceError as exc:
        return error_response(exc.status, exc.message)
    return JsonResponse({"batch_id": str(batch.pk), **batch_links(request, batch)}, status=202)


@require_POST
@api_login_required
def batch_delete(request, batch_id):
    """``POST /api/batches/{id}/delete``: the same as ``DELETE /api/batches/{id}``."""
    batch = get_batch_or_404(request.user, batch_id)
    accept.delete_batch(batch)
    return HttpResponse(status=204)


@require_GET
@api_login_required
def batch_results(request, batch_id):
    """``GET /api/batches/{id}/results.csv``: the results file, as an attachment."""
    batch = get_batch_or_404(request.user, batch_id)
    if batch.stage != Stage.COMPLETED or not batch.results_csv:
        return error_response(409, f"the results are not ready yet (the batch is {Stage(batch.stage).label.lower()})")
    try:
        handle = default_storage.open(batch.results_csv.name, "rb")
    except FileNotFoundError:
        return error_response(404, "the results file is missing; retry the batch")
    response = FileResponse(handle, as_attachment=True, filename=f"results-{batch.pk}.csv",
                            content_type="text/csv; charset=utf-8")
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@api_login_required
async def batch_stream(request, batch_id):
    """``GET /api/batches/{id}/stream``: Server-Sent Events of the batch's progress.

    Replays every event after ``Last-Event-ID`` (all when absent), follows live,
    sends ``: keep-alive`` when idle, and ends after the terminal event, or
    after ``OMR_STREAM_MAX_SECONDS`` with a ``retry:`` (the client resumes with
    ``Last-Event-ID``). 429 when the user holds ``OMR_MAX_STREAMS_PER_USER``.
    """
    from asgiref.sync import sync_to_async

    batch = await sync_to_async(get_batch_or_404)(request.user, batch_id)
    slot = await stream_limits.take_slot(request.user.pk)
    if slot is None:
        return stream_limits.too_many_streams_json()
    body = streams.serve(streams.sse_stream(batch.pk, streams.last_event_id(request)), slot)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx and friends: do not hold the stream
    return response


@require_GET
def health(request):
    """``GET /api/health``: database, Redis, workers, queue length, version,
    uptime. 200 when the database and Redis answer and a worker is alive, else 503.
    No login needed for the answer a load balancer wants: ok or not per part.
    The details (error text, worker hosts and pids, queue length, version)
    help an attacker too, so only a logged-in staff user (session or token) sees them."""
    body = _health_details()
    if not _is_staff(request):
        body = {"status": body["status"], **{part: {"ok": body[part]["ok"]} for part in HEALTH_PARTS}}
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)


#: The parts whose ok/not ok anyone may see.
HEALTH_PARTS = ("database", "redis", "workers")


def _is_staff(request) -> bool:
    user = token_user(request)
    if user is None:
        user = request.user
    return bool(user.is_authenticated and user.is_staff)


def _health_details() -> dict:
    body: dict = {"version": settings.VERSION, "uptime_seconds": int(time.time() - settings.PROCESS_STARTED)}
    healthy = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        body["database"] = {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        healthy = False
        body["database"] = {"ok": False, "error": str(exc)[:200]}
    body["redis"], body["queue"] = _redis_health()
    healthy &= body["redis"]["ok"]
    try:
        cutoff = timezone.now() - datetime.timedelta(seconds=max(30.0, 3 * settings.OMR_HEARTBEAT_INTERVAL))
        alive = list(WorkerHeartbeat.objects.filter(beat_at__gte=cutoff).values_list("name", flat=True))
        body["workers"] = {"ok": bool(alive), "alive": len(alive), "names": alive}
    except Exception as exc:
        body["workers"] = {"ok": False, "alive": 0, "error": str(exc)[:200]}
    healthy &= body["workers"]["ok"]
    body["status"] = "ok" if healthy else "error"
    return body


def _redis_health() -> tuple[dict, dict]:
    if settings.DRAMATIQ_BACKEND == "stub":
        import dramatiq

        broker = dramatiq.get_broker()
        length = sum(q.qsize() for q in getattr(broker, "queues", {}).values())
        return {"ok": True, "backend": "stub"}, {"length": length}
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
            queue = f"{settings.REDIS_NAMESPACE}-dramatiq:default"
            length = client.llen(queue) + client.llen(f"{queue}.DQ")
        finally:
            client.close()
        return {"ok": True}, {"length": length}
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}, {"length": None}
