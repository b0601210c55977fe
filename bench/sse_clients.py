"""Many SSE clients on one batch (docs/reliability.md, Load): every client gets
every event, in order, once; how late the live ones arrive; and how many
database connections the web process and the workers used meanwhile.

Starts the real parts (one Daphne, a ``rundramatiq`` worker with 2 processes,
Redis, a database of its own on the server of ``DATABASE_URL``), and for each
client count uploads a ZIP of simulated sheets and connects that many clients
to ``/api/batches/{id}/stream`` at once while the batch runs, reading every
stream to its end. Prints per-client completeness against the full event log,
the publish -> client delay (p50/p95/max) over all live events, and the most
database connections open at once (PostgreSQL's ``pg_stat_activity``, by
``application_name``).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omr \\
        python bench/sse_clients.py --clients 200 500 1000 [--sheets 100]

Each client is a socket in this process and in Daphne: the soft limit on open
files is raised to the hard limit first (``resource.setrlimit``), and Daphne
inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import threading
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
from tests.sse_client import read_stream  # noqa: E402
from tests.test_end_to_end import Servers  # noqa: E402


class NamedServers(Servers):
    """``Servers`` whose web and worker processes name their PostgreSQL
    sessions (``application_name``), so their connections can be counted apart."""

    def _named(self, name: str, start) -> None:
        env = self.env
        self.env = {**env, "PGAPPNAME": name}
        try:
            start()
        finally:
            self.env = env

    def start_web(self) -> None:
        self._named("omr-bench-web", super().start_web)

    def start_worker(self) -> None:
        self._named("omr-bench-worker", super().start_worker)


class ConnectionSampler:
    """The most sessions per ``application_name`` seen on the servers' database,
    sampled every 100 ms (PostgreSQL only)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop.wait(0.1):
                rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                                    "GROUP BY 1").fetchall()
                for name, count in rows:
                    self.peak[name or "(unnamed)"] = max(self.peak.get(name or "(unnamed)", 0), count)

    def __enter__(self):
        if self.db_url.startswith(("postgres://", "postgresql://")):
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def run_clients(port: int, token: str, batch_id: str, n: int):
    """Every client's stream, and the delays of live events: all of them, and
    those published once every client had its first event (the clients
    connect while the batch runs, so the first seconds also carry n logins)."""
    delays: list[tuple[float, float]] = []  # (published at, delay ms)
    started = time.time()
    first_events: list[float] = []

    def on_event_of_one_client():
        seen = False

        def on_event(event: dict) -> None:
            nonlocal seen
            now = time.time()
            if not seen:
                seen = True
                first_events.append(now)
            sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            if sent >= started:  # live, not replayed
                delays.append((sent, (now - sent) * 1000))
        return on_event

    path = f"/api/batches/{batch_id}/stream"
    reads = await asyncio.gather(*(read_stream(port, path, {"Authorization": f"Bearer {token}"},
                                               on_event=on_event_of_one_client()) for _ in range(n)),
                                 return_exceptions=True)
    all_in = max(first_events, default=started)
    return reads, [d for _, d in delays], [d for sent, d in delays if sent >= all_in], all_in - started


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[200])
    parser.add_argument("--sheets", type=int, default=100)
    args = parser.parse_args()
    limit = raise_open_file_limit()
    if limit < max(args.clients) * 2 + 100:
        print(f"the open-file limit is {limit}: too low for {max(args.clients)} clients")
        return 2

    from batches.omr import load_template

    unique = make_sheets(load_template("a4-100q-5"), 20, "clean", seed=5)
    archive = make_zip([(f"scan_{i:04d}.jpg", unique[i % len(unique)][0]) for i in range(args.sheets)])

    ok = True
    with tempfile.TemporaryDirectory(prefix="omr-bench-sse-") as tmp:
        servers = NamedServers(Path(tmp))
        for key in ("OMR_CHUNK_SIZE", "OMR_PROGRESS_INTERVAL"):
            servers.env.pop(key, None)
        # One user holds every stream here: no cap.
        servers.env["OMR_MAX_STREAMS_PER_USER"] = "0"
        pool = servers.env.get("OMR_DB_POOL_SIZE", "10")
        print(f"database {servers.db_url.split('://')[0]}, web pool {pool}, open-file limit {limit}")
        try:
            servers.start("bench")
            for clients in args.clients:
                links = servers.upload(archive)  # each upload is a new batch
                with ConnectionSampler(servers.db_url) as sampler:
                    t0 = time.perf_counter()
                    reads, delays, steady, connect_s = asyncio.run(
                        run_clients(servers.port, servers.token, links["batch_id"], clients))
                    took = time.perf_counter() - t0
                _headers, full, _comments = servers.stream(links["batch_id"])
                ok &= report(clients, args.sheets, full, reads, delays, took, sampler.peak)
                print(f"  every client had its first event {connect_s:.1f} s after the first connected; events "
                      f"published after that, {len(steady)} deliveries: p50 {percentile(steady, 0.5):.0f} ms, "
                      f"p95 {percentile(steady, 0.95):.0f} ms")
        finally:
            servers.stop()
            servers.drop_db()
    return 0 if ok else 1


def report(clients, sheets, full, reads, delays, took, peak) -> bool:
    expected = [e["id"] for e in full]
    failed = [r for r in reads if isinstance(r, BaseException)]
    streams = [r for r in reads if not isinstance(r, BaseException)]
    statuses = sorted({r.status for r in streams})
    complete = sum(r.status == 200 and [e["id"] for e in r.events] == expected for r in streams)
    print(f"\n{clients} clients on one batch of {sheets} sheets, {len(expected)} events, "
          f"all streams ended after {took:.1f} s; statuses {statuses}, {len(failed)} connections failed")
    print(f"  clients with every event, in order, once: {complete}/{clients}")
    for r in [r for r in streams if [e["id"] for e in r.events] != expected][:3]:
        got = [e["id"] for e in r.events]
        print(f"  a client ({r.status}) got {len(got)} events; missing {sorted(set(expected) - set(got))[:10]}")
    for exc in failed[:3]:
        print(f"  a client failed: {exc!r}")
    print(f"  publish -> client, {len(delays)} deliveries: p50 {percentile(delays, 0.5):.0f} ms, "
          f"p95 {percentile(delays, 0.95):.0f} ms, max {max(delays, default=0):.0f} ms (live events only)")
    if peak:
        print("  most database connections at once: " + ", ".join(f"{k} {v}" for k, v in sorted(peak.items())))
    return complete == clients


if __name__ == "__main__":
    sys.exit(main())
