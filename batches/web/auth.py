"""Who is asking: API tokens (``Authorization: Bearer``) or the session, and the
one helper that scopes batches to the user.

Token requests carry no cookies, so they need no CSRF token; session requests
that change state are checked against CSRF exactly as Django's middleware
would (the API views are exempt from the middleware so tokens work).
"""

from __future__ import annotations

import functools

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.http import Http404, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from ..models import ApiToken, Batch, hash_token


def error_response(status: int, message: str, **extra) -> JsonResponse:
    """The API's error body: ``{"error": "plain words"}``."""
    return JsonResponse({"error": message, **extra}, status=status)


class ExpiredToken(AnonymousUser):
    """Who sent a real token past its expiry: nobody, but told why."""

    def __init__(self, expired_at):
        super().__init__()
        self.expired_at = expired_at


def token_user(request):
    """The user of a valid bearer token, None when no token was sent,
    ``ExpiredToken`` for a token past its expiry, or AnonymousUser when one
    was sent but is not valid."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return AnonymousUser()
    row = ApiToken.objects.select_related("user").filter(digest=hash_token(token.strip())).first()
    if row is None or not row.user.is_active:
        return AnonymousUser()
    now = timezone.now()
    if row.is_expired(now):
        return ExpiredToken(row.expires_at)
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user


def _csrf_failure(request) -> HttpResponse | None:
    def no_response(_request):  # pragma: no cover - never called
        return HttpResponse()

    check = CsrfViewMiddleware(no_response)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def authenticate(request) -> HttpResponse | None:
    """Set ``request.user`` from a token or the session; returns an error
    response (401, 403) or None when the request may go on."""
    user = token_user(request)
    if user is None:
        user = request.user  # the session (AuthenticationMiddleware)
        if user.is_authenticated and request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            failure = _csrf_failure(request)
            if failure is not None:
                return error_response(403, "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken")
    else:
        request.user = user
    if not user.is_authenticated:
        if request.method == "GET" and "text/html" in request.headers.get("Accept", "") and user is request.user:
            # A browser following a link (the results download): off to the login page.
            from django.contrib.auth.views import redirect_to_login

            return redirect_to_login(request.get_full_path())
        if isinstance(user, ExpiredToken):
            message = (f"this API token expired on {user.expired_at:%Y-%m-%d %H:%M} UTC: "
                       "make a new one with manage.py create_api_token")
        else:
            message = "authentication required: log in, or send Authorization: Bearer <token>"
        response = error_response(401, message)
        response["WWW-Authenticate"] = 'Bearer realm="omr"'
        return response
    if not user.is_staff:
        return error_response(403, "only staff users may use the batch API")
    return None


def api_login_required(view):
    """For API views (sync or async): token or session login of a staff user;
    CSRF enforced for session requests."""
    if iscoroutinefunction(view):
        @functools.wraps(view)
        async def async_wrapper(request, *args, **kwargs):
            failure = await sync_to_async(authenticate)(request)
            if failure is not None:
                return failure
            return await view(request, *args, **kwargs)

        return csrf_exempt(async_wrapper)

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        failure = authenticate(request)
        if failure is not None:
            return failure
        return view(request, *args, **kwargs)

    return csrf_exempt(wrapper)


def batches_for(user):
    """The batches ``user`` may see: their own; every batch for superusers."""
    if user.is_superuser:
        return Batch.objects.all()
    return Batch.objects.filter(owner=user)


def get_batch_or_404(user, batch_id) -> Batch:
    """One batch of ``user`` or 404 (another user's batch is not found either)."""
    try:
        return batches_for(user).get(pk=batch_id)
    except (Batch.DoesNotExist, ValueError):
        raise Http404("no such batch") from None


def get_exam_batch_or_404(request, exam):
    """The ``?batch=`` of an exam's results or downloads: ``None`` when absent,
    else one of the user's batches of this exam (404 otherwise)."""
    raw = request.GET.get("batch")
    if not raw:
        return None
    batch = get_batch_or_404(request.user, raw)
    if batch.exam_id != exam.pk:
        raise Http404("no such batch of this exam")
    return batch
