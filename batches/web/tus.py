"""The HTTP endpoints of resumable uploads (tus 1.0) under ``/api/uploads/``:
protocol headers, login, and errors as JSON; the uploads themselves are
kept by ``uploads/tus.py`` (docs/uploads.md)."""

from __future__ import annotations

import functools

from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt

from ..models import Upload
from ..uploads.accept import ServiceError
from ..uploads.tus import (
    CHECKSUMS,
    EXPOSED_HEADERS,
    TUS_EXTENSIONS,
    TUS_VERSION,
    TusError,
    complete_stalled,
    create_upload,
    metadata_header,
    parse_int_header,
    parse_metadata,
    terminate_upload,
    write_chunk,
)
from .api import batch_links
from .auth import api_login_required, error_response


def uploads_for(user):
    """The uploads ``user`` may touch: their own only."""
    return Upload.objects.filter(owner=user).select_related("batch")


def get_upload_or_404(user, upload_id) -> Upload:
    try:
        return uploads_for(user).get(pk=upload_id)
    except (Upload.DoesNotExist, ValueError):
        raise Http404("no such upload") from None


def _options() -> HttpResponse:
    response = HttpResponse(status=204)
    response["Tus-Version"] = TUS_VERSION
    response["Tus-Extension"] = TUS_EXTENSIONS
    response["Tus-Max-Size"] = str(settings.OMR_MAX_UPLOAD_BYTES)
    response["Tus-Checksum-Algorithm"] = ",".join(CHECKSUMS)
    return response


def tus_endpoint(view):
    """What every tus answer shares: ``Tus-Resumable`` (errors included), 412
    for another protocol version, OPTIONS without a login, ``POST`` with
    ``X-HTTP-Method-Override`` for clients that cannot send PATCH or DELETE,
    the staff login of the rest of the API (token, or session + CSRF token),
    and TusError/ServiceError/404 as ``{"error": ...}`` answers."""
    @functools.wraps(view)
    def guarded(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except (TusError, ServiceError) as exc:
            response = error_response(exc.status, exc.message)
            for name, value in getattr(exc, "headers", {}).items():
                response[name] = value
            return response
        except Http404:
            return error_response(404, "no such upload")

    authenticated = api_login_required(guarded)

    @functools.wraps(view)
    def endpoint(request, *args, **kwargs):
        override = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
        if request.method == "POST" and override in {"PATCH", "DELETE", "HEAD"}:
            request.method = override  # CSRF is still checked: PATCH and DELETE are unsafe methods
        if request.method == "OPTIONS":
            response = _options()
        elif request.method != "GET" and request.headers.get("Tus-Resumable", "").strip() != TUS_VERSION:
            response = error_response(412, f"this server speaks tus {TUS_VERSION}: send Tus-Resumable: {TUS_VERSION}")
            response["Tus-Version"] = TUS_VERSION
        else:
            response = authenticated(request, *args, **kwargs)
        response["Tus-Resumable"] = TUS_VERSION
        response["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response

    return csrf_exempt(endpoint)


def _not_allowed(allowed: str) -> HttpResponse:
    response = error_response(405, f"allowed methods: {allowed}")
    response["Allow"] = allowed
    return response


def _upload_headers(response: HttpResponse, upload: Upload) -> HttpResponse:
    response["Upload-Offset"] = str(upload.offset)
    response["Upload-Batch-Id"] = str(upload.batch_id)
    if not upload.is_finished:
        response["Upload-Expires"] = http_date(upload.expires_at.timestamp())
    return response


@tus_endpoint
def upload_collection(request):
    """``POST /api/uploads/``: tus creation. ``Upload-Length`` and
    ``Upload-Metadata`` (``filename``, ``template``, ``has_qr``, ``sha256``/``sha1``).
    201 with ``Location``, ``Upload-Batch-Id`` and the batch's links as JSON."""
    if request.method != "POST":
        return _not_allowed("OPTIONS, POST")
    if request.headers.get("Upload-Defer-Length"):
        raise TusError(400, "Upload-Defer-Length is not supported: send Upload-Length")
    length = parse_int_header(request, "Upload-Length")
    upload = create_upload(request.user, length=length,
                           metadata=parse_metadata(request.headers.get("Upload-Metadata", "")))
    location = request.build_absolute_uri(upload.get_absolute_url())
    response = JsonResponse({"upload_url": location, "batch_id": str(upload.batch_id),
                             **batch_links(request, upload.batch)}, status=201)
    response["Location"] = location
    return _upload_headers(response, upload)


@tus_endpoint
def upload_resource(request, upload_id):
    """``/api/uploads/{id}``: ``HEAD`` (offset, length), ``PATCH`` (a chunk),
    ``DELETE`` (termination), ``GET`` (the upload and its batch's links as JSON)."""
    if request.method not in ("HEAD", "GET", "PATCH", "DELETE"):
        return _not_allowed("OPTIONS, HEAD, GET, PATCH, DELETE")
    upload = get_upload_or_404(request.user, upload_id)
    if request.method == "DELETE":
        terminate_upload(upload)
        return HttpResponse(status=204)
    if request.method == "PATCH":
        upload = write_chunk(request, upload)
        return _upload_headers(HttpResponse(status=204), upload)
    if upload.is_expired():
        raise TusError(410, f"this upload expired at {upload.expires_at:%Y-%m-%d %H:%M} UTC; start a new one")
    upload = complete_stalled(upload)
    if request.method == "GET":
        response = JsonResponse({"upload_url": request.build_absolute_uri(upload.get_absolute_url()),
                                 "offset": upload.offset, "length": upload.length,
                                 "finished": upload.is_finished, "error": upload.error,
                                 "expires_at": None if upload.is_finished else upload.expires_at.isoformat(),
                                 "batch_id": str(upload.batch_id), **batch_links(request, upload.batch)})
    else:
        response = HttpResponse(status=200)
        response["Upload-Length"] = str(upload.length)
        if upload.metadata:
            response["Upload-Metadata"] = metadata_header(upload.metadata)
    response["Cache-Control"] = "no-store"
    return _upload_headers(response, upload)
