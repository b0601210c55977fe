"""A cap on request bodies, by URL, checked before Django reads any of it.

Daphne (Twisted underneath) takes in a whole request before it calls the
application: a body of 100 KB or more goes to a temporary file, and Daphne
then copies all of it into the application's in-memory queue at once. Django
then reads it all into its own spooled temporary file, and only after that
does a view look at the login. Nothing in the application can stop Daphne's
copy: the proxy in front must cap bodies (README, ``deploy/``). What this
guard does: a request whose ``Content-Length`` is over its URL's limit is
answered 413 at once, before Django reads it; a body sent without a length
is cut off where it passes the limit (Django stops reading) and answered 413,
so Django never writes more than the limit to disk.
"""

from __future__ import annotations

import json

from django.conf import settings

#: Beyond an upload's own size limit: the multipart envelope and form fields.
ENVELOPE = 1024 * 1024
#: The admin's template upload: three files of at most 20 MB each.
ADMIN_LIMIT = 64 * 1024 * 1024


def limit_for(path: str) -> int:
    """The largest body the URL ``path`` accepts, in bytes."""
    if path in ("/api/batches/upload", "/batches/upload"):
        return settings.OMR_MAX_UPLOAD_BYTES + ENVELOPE
    if path.startswith("/api/uploads/"):
        return settings.OMR_TUS_MAX_CHUNK_BYTES + ENVELOPE
    if path.startswith("/admin/"):
        return ADMIN_LIMIT
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + ENVELOPE


class RequestBodyLimit:
    """ASGI middleware around the Django application."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limit_for(scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit:
            return await _refuse(send, length, limit)
        if length is not None:
            return await self.app(scope, receive, send)
        received = 0
        cut_off = started = False

        async def counting_receive():
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut_off = True
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if cut_off and not started:
            await _refuse(send, received, limit, over=True)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send, length: int, limit: int, over: bool = False) -> None:
    mb = 1024 * 1024
    size = f"over {limit / mb:,.0f} MB" if over else f"{length / mb:,.1f} MB"
    body = json.dumps({"error": f"the request body is {size}; this URL accepts at most "
                                f"{limit / mb:,.0f} MB"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
