"""Many SSE clients on one batch (docs/reliability.md, Load): every client gets
every event, in order, once; and how late the live ones arrive.

Starts the real parts (Daphne, a ``rundramatiq`` worker with 2 processes,
Redis, a database of its own), uploads a ZIP of simulated sheets, connects N
clients to ``/api/batches/{id}/stream`` at once while the batch runs, and reads
every stream to its end. Prints per-client completeness against the full
event log, and the publish -> client delay (p50/p95/max) over all live events.

    python bench/sse_clients.py [--clients 200] [--sheets 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import django
from _common import make_sheets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omrsite.settings")
django.setup()

from tests.conftest import make_zip  # noqa: E402
from tests.test_end_to_end import Servers  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def follow(port: int, token: str, batch_id: str, delays: list[float]) -> list[int]:
    """One client: the ids of the events it got, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET /api/batches/{batch_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    ids: list[int] = []
    frame: dict[str, str] = {}
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        chunked |= line.lower().startswith(b"transfer-encoding: chunked")
    connected = time.time()
    buffer = b""
    while True:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            buffer += data[:-2]
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
                    ids.append(event["id"])
                    sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                    if sent >= connected:  # live, not replayed
                        delays.append((time.time() - sent) * 1000)
                frame = {}
            elif not text.startswith(":"):
                key, _, value = text.partition(": ")
                frame[key] = value
    writer.close()
    return ids


async def run_clients(port: int, token: str, batch_id: str, n: int) -> tuple[list[list[int]], list[float]]:
    delays: list[float] = []
    results = await asyncio.gather(*(follow(port, token, batch_id, delays) for _ in range(n)))
    return list(results), delays


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--sheets", type=int, default=100)
    args = parser.parse_args()

    from batches.omr import load_template

    unique = make_sheets(load_template("a4-100q-5"), 20, "clean", seed=5)
    archive = make_zip([(f"scan_{i:04d}.jpg", unique[i % len(unique)][0]) for i in range(args.sheets)])

    with tempfile.TemporaryDirectory(prefix="omr-bench-sse-") as tmp:
        servers = Servers(Path(tmp))
        for key in ("OMR_CHUNK_SIZE", "OMR_PROGRESS_INTERVAL"):
            servers.env.pop(key, None)
        try:
            servers.start("bench")
            links = servers.upload(archive)
            t0 = time.perf_counter()
            streams, delays = asyncio.run(run_clients(servers.port, servers.token, links["batch_id"], args.clients))
            took = time.perf_counter() - t0
            _headers, full, _comments = servers.stream(links["batch_id"])
        finally:
            servers.stop()
            servers.drop_db()

    expected = [e["id"] for e in full]
    complete = sum(ids == expected for ids in streams)
    print(f"{args.clients} clients on one batch of {args.sheets} sheets, {len(expected)} events, "
          f"all streams ended after {took:.1f} s")
    print(f"clients with every event, in order, once: {complete}/{args.clients}")
    bad = [ids for ids in streams if ids != expected][:3]
    for ids in bad:
        print(f"  a client got {len(ids)} events; missing {sorted(set(expected) - set(ids))[:10]}")
    print(f"publish -> client, {len(delays)} deliveries: p50 {percentile(delays, 0.5):.0f} ms, "
          f"p95 {percentile(delays, 0.95):.0f} ms, max {max(delays, default=0):.0f} ms (live events only)")
    return 0 if complete == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
