"""End-to-end throughput of the batch server with real parts: Daphne, a
``rundramatiq`` worker (2 processes x 1 thread), Redis, and a database of its own.

Prints, for a ZIP of N simulated sheets: sheets per second from upload accepted
to ``completed``, that figure divided by the engine's own single-core speed on
the same pages, the time per stage, and the delay from a publish (the event's
timestamp) to its bytes reaching an SSE client (p50/p95/max).

    python bench/batch_throughput.py [--sheets 500] [--unique 50] [--preset scan_mild]

Run with DATABASE_URL=postgres://... to measure on PostgreSQL (a fresh database
is created and dropped). Target: end to end >= 1.4x the single-core engine.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path

import django
from _common import make_sheets, median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omrsite.settings")
django.setup()  # the end-to-end helpers import the models

from tests.test_end_to_end import Servers  # noqa: E402  (the same start-up as the end-to-end test)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sheets", type=int, default=500)
    parser.add_argument("--unique", type=int, default=50, help="distinct simulated pages, repeated to --sheets")
    parser.add_argument("--preset", default="scan_mild")
    parser.add_argument("--template", default="a4-100q-5")
    args = parser.parse_args()

    from batches.omr import load_template, reader

    template = load_template(args.template)
    t0 = time.perf_counter()
    unique = make_sheets(template, args.unique, args.preset, seed=3)
    pages = [unique[i % len(unique)][0] for i in range(args.sheets)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i, data in enumerate(pages):
            z.writestr(f"scan_{i:05d}.jpg", data)
    archive = buf.getvalue()
    print(f"{args.sheets} sheets ({args.unique} distinct, preset {args.preset}), ZIP {len(archive) / 1e6:.0f} MB, "
          f"made in {time.perf_counter() - t0:.0f} s")

    def engine_alone() -> float:
        """The engine alone on one core, same pages, same template (sheets/s)."""
        t = time.perf_counter()
        for data in pages:
            reader.read_image_bytes(data, template)
        return len(pages) / (time.perf_counter() - t)

    # Measured before and after the server run: a shared machine's speed drifts
    # by a quarter within minutes, and the ratio should compare like with like.
    engine_before = engine_alone()
    print(f"engine alone, one process: {engine_before:.1f} sheets/s")

    with tempfile.TemporaryDirectory(prefix="omr-bench-") as tmp:
        servers = Servers(Path(tmp))
        # Production-like settings: default chunking and progress interval.
        for key in ("OMR_CHUNK_SIZE", "OMR_PROGRESS_INTERVAL", "OMR_HEARTBEAT_INTERVAL"):
            servers.env.pop(key, None)
        try:
            vendor = servers.start("bench")["database"].get("vendor", "?")

            delays: list[float] = []
            stage_start: dict[str, float] = {}

            def on_event(event: dict) -> None:
                now = time.time()
                sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                delays.append((now - sent) * 1000)
                stage_start.setdefault(event["stage"], now)

            t_upload = time.perf_counter()
            links = servers.upload(archive)
            accepted = time.perf_counter()
            _headers, events, _comments = servers.stream(links["batch_id"], on_event=on_event, timeout=3600)
            done = time.perf_counter()
        finally:
            servers.stop()
            servers.drop_db()

    engine_after = engine_alone()
    engine_rate = (engine_before + engine_after) / 2
    print(f"engine alone again, after: {engine_after:.1f} sheets/s; the ratio uses the mean, {engine_rate:.1f}")
    last = events[-1]
    wall = done - accepted
    rate = last["sheets_processed"] / wall
    print(f"database {vendor}; upload took {accepted - t_upload:.1f} s ({len(archive) / 1e6 / (accepted - t_upload):.0f} MB/s)")
    print(f"accepted -> {last['stage']}: {wall:.1f} s = {rate:.1f} sheets/s "
          f"({last['sheets_processed']} processed, {last['sheets_failed']} failed), {len(events)} events")
    print(f"end to end / single-core engine: {rate / engine_rate:.2f}x   (target >= 1.4x)")
    if "processing_sheets" in stage_start and "collecting_results" in stage_start:
        span = stage_start["collecting_results"] - stage_start["processing_sheets"]
        print(f"processing_sheets alone: {last['sheets_processed'] / span:.1f} sheets/s = "
              f"{last['sheets_processed'] / span / engine_rate:.2f}x the engine")
    stages = list(stage_start)
    for a, b in zip(stages, stages[1:], strict=False):
        print(f"  {a:20} {stage_start[b] - stage_start[a]:6.1f} s")
    print(f"publish -> SSE client: p50 {median(delays):.1f} ms, p95 {percentile(delays, 0.95):.1f} ms, "
          f"max {max(delays):.1f} ms (event timestamps are in ms)")
    return 0 if last["stage"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
