"""A small asyncio SSE client over a raw socket, for many streams at once (the
load tests and ``bench/sse_clients.py``): thousands of these cost little."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class StreamRead:
    status: int = 0
    body: bytes = b""  # the body of a response that is not a stream (a 429)
    events: list[dict] = field(default_factory=list)  # the decoded ``data:`` of each event
    retry: int | None = None  # the last ``retry:`` the server sent
    comments: list[str] = field(default_factory=list)


async def read_stream(port: int, path: str, headers: dict[str, str], *, on_event=None,
                      host: str = "127.0.0.1") -> StreamRead:
    """GET ``path`` and read the event stream until the server ends it.
    ``on_event(data)`` is called for every event as it arrives."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, "Accept": "text/event-stream", **headers}.items())
        writer.write(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
        await writer.drain()
        result = StreamRead()
        status_line = await reader.readline()
        result.status = int(status_line.split()[1])
        chunked = False
        length = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            lower = line.lower()
            chunked |= lower.startswith(b"transfer-encoding: chunked")
            if lower.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if result.status != 200:
            result.body = await reader.readexactly(length) if length is not None else await reader.read()
            return result
        buffer = b""
        frame: dict[str, str] = {}
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    break
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    break
                buffer += (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                text = raw.decode().rstrip("\r")
                if text == "":
                    if "data" in frame:
                        event = json.loads(frame["data"])
                        result.events.append(event)
                        if on_event is not None:
                            on_event(event)
                    frame = {}
                elif text.startswith(":"):
                    result.comments.append(text[1:].strip())
                else:
                    key, _, value = text.partition(": ")
                    if key == "retry":
                        result.retry = int(value)
                    else:
                        frame[key] = value
        return result
    finally:
        writer.close()
