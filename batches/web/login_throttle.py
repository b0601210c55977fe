"""Failed logins counted in the cache, per client address and per username;
past the limit the login pages answer 429 until the window has passed.

Both login pages (the site's and the admin's) go through ``throttled``; the
failures are counted from Django's ``user_login_failed`` signal, which every
``authenticate()`` sends, so one counter serves both. The cache is Redis in
production (shared by every web process) and per process in tests. A blocked
user is blocked even with the right password: otherwise guessing simply goes on.
"""

from __future__ import annotations

import functools
import hashlib

from django.conf import settings
from django.core.cache import cache
from django.shortcuts import render


def client_address(request) -> str:
    """The client's address as the server sees it (Daphne's ``--proxy-headers``
    puts the proxy's ``X-Forwarded-For`` here behind a proxy)."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def _keys(address: str, username: str) -> list[tuple[str, int]]:
    # Hashed: a username may hold any characters, and cache keys may not.
    user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [(f"login-fail:ip:{address}", settings.OMR_LOGIN_FAILURES_PER_ADDRESS),
            (f"login-fail:user:{user}", settings.OMR_LOGIN_FAILURES_PER_USER)]


def record_failure(address: str, username: str) -> None:
    window = int(settings.OMR_LOGIN_WINDOW_MINUTES * 60)
    for key, _limit in _keys(address, username):
        # add() starts the window; incr() keeps its expiry (a fixed window).
        if not cache.add(key, 1, window):
            try:
                cache.incr(key)
            except ValueError:  # expired between the two calls
                cache.add(key, 1, window)


def is_blocked(address: str, username: str) -> bool:
    counts = cache.get_many([key for key, _ in _keys(address, username)])
    return any(counts.get(key, 0) >= limit for key, limit in _keys(address, username))


def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    if request is not None:
        record_failure(client_address(request), str(credentials.get("username", "")))


def throttled(view):
    """A login view whose POSTs are refused (429) once the address or the
    username has failed too often within the window."""
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.method == "POST" and is_blocked(client_address(request), request.POST.get("username", "")):
            minutes = settings.OMR_LOGIN_WINDOW_MINUTES
            response = render(request, "registration/too_many_logins.html", {"minutes": minutes}, status=429)
            response["Retry-After"] = str(int(minutes * 60))
            return response
        return view(request, *args, **kwargs)

    return wrapper
