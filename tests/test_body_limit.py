"""The request body cap in front of Django (``batches/web/body_limit.py``):
a body over its URL's limit is refused before any of it is read."""

from __future__ import annotations

import asyncio

from batches.web.body_limit import RequestBodyLimit, limit_for


class Inner:
    """An application that reads the whole body, as Django's handler does."""

    def __init__(self):
        self.called = False
        self.body = b""
        self.disconnected = False

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(path: str, chunks: list[bytes], length: int | None):
    inner = Inner()
    pulled = []
    sent = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        pulled.append(1)
        return messages[len(pulled) - 1]

    async def send(message):
        sent.append(message)

    headers = [(b"content-length", str(length).encode())] if length is not None else []
    scope = {"type": "http", "path": path, "method": "POST", "headers": headers}
    asyncio.run(RequestBodyLimit(inner)(scope, receive, send))
    return inner, pulled, sent


def test_limits_follow_the_urls(settings):
    settings.OMR_MAX_UPLOAD_BYTES = 100 * 2**20
    settings.OMR_TUS_MAX_CHUNK_BYTES = 64 * 2**20
    assert limit_for("/api/batches/upload") == limit_for("/batches/upload") == 101 * 2**20
    assert limit_for("/api/uploads/3f2a") == 65 * 2**20
    assert limit_for("/accounts/login/") == limit_for("/api/batches/x/retry") < 4 * 2**20


def test_a_body_over_the_limit_is_refused_before_a_byte_is_read(settings):
    settings.OMR_MAX_UPLOAD_BYTES = 10 * 2**20
    inner, pulled, sent = call("/accounts/login/", [b"x" * 1000], length=5 * 2**30)
    assert not inner.called and pulled == []
    assert sent[0]["status"] == 413 and b"accepts at most" in sent[1]["body"]
    # The upload URL takes its own limit
    inner, pulled, sent = call("/api/batches/upload", [b"x"], length=12 * 2**20)
    assert sent[0]["status"] == 413 and not inner.called


def test_a_body_within_the_limit_passes_untouched(settings):
    inner, _pulled, sent = call("/api/batches/upload", [b"a" * 10, b"b" * 10], length=20)
    assert inner.body == b"a" * 10 + b"b" * 10 and sent[0]["status"] == 200


def test_a_body_without_a_length_is_cut_off_past_the_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 0  # the login page: the envelope only, 1 MB
    chunks = [b"x" * 2**19] * 5  # 2.5 MB, no Content-Length
    inner, pulled, sent = call("/accounts/login/", chunks, length=None)
    assert inner.disconnected and len(inner.body) <= 2**20 and len(pulled) == 3
    assert sent[0]["status"] == 413 and b"over 1 MB" in sent[1]["body"]
