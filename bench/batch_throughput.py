"""End-to-end throughput of the batch server with real parts: Daphne, a
``rundramatiq`` worker (2 processes x 1 thread), Redis, and a database of its own.

Prints, for a ZIP of N simulated sheets: sheets per second from upload accepted
to ``completed``, that figure divided by the engine's own single-core speed on
the same pages, the time per stage, and the delay from a publish (the event's
timestamp) to its bytes reaching an SSE client (p50/p95/max, live events).
Beside them, to tell the server's losses from the machine's: what two bare
engine processes get at once (this machine's ceiling for two processes, which
on a shared VM is well under 2x), the share of it the server reaches, and the
workers' CPU time per sheet against the engine's own.

    python bench/batch_throughput.py [--sheets 500] [--unique 50] [--preset scan_mild] [--rounds 3]

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
    parser.add_argument("--rounds", type=int, default=3, help="batches in a row, each between two engine timings")
    parser.add_argument("--engine-pass", help=argparse.SUPPRESS)  # the child process of two_engines()
    args = parser.parse_args()
    if args.engine_pass:
        return engine_pass(args.engine_pass, args.template, args.sheets)

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

    cpu_per_sheet: list[float] = []  # the engine alone's CPU time per sheet (ms), each timing

    def engine_alone() -> float:
        """The engine alone on one core, same pages, same template (sheets/s)."""
        t, c = time.perf_counter(), time.process_time()
        for data in pages:
            reader.read_image_bytes(data, template)
        cpu_per_sheet.append((time.process_time() - c) * 1000 / len(pages))
        return len(pages) / (time.perf_counter() - t)

    ratios: list[float] = []
    efficiencies: list[float] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="omr-bench-") as tmp:
        archive_path = Path(tmp) / "pages.zip"
        archive_path.write_bytes(archive)
        servers = Servers(Path(tmp))
        # Production-like settings: default chunking and progress interval.
        for key in ("OMR_CHUNK_SIZE", "OMR_PROGRESS_INTERVAL", "OMR_HEARTBEAT_INTERVAL"):
            servers.env.pop(key, None)
        try:
            vendor = servers.start("bench")["database"].get("vendor", "?")
            print(f"database {vendor}; 2 worker processes x 1 thread")
            for round_ in range(1, args.rounds + 1):
                # The engine is timed just before and just after each batch (the
                # servers idle meanwhile): a shared machine's speed drifts by a
                # quarter within minutes.
                before = engine_alone()
                ratio, ok_round = one_batch(servers, archive)
                after = engine_alone()
                pair = two_engines(archive_path, args.template, min(len(pages), 200))
                # The faster timing is the one least disturbed (the kernel writing
                # the last batch's files back to disk slows the next timing down):
                # the ratio is taken against it, the strict reading; the mean is shown too.
                engine_rate = max(before, after)
                mean = (before + after) / 2
                ok &= ok_round
                ratios.append(ratio["end_to_end"] / engine_rate)
                print(f"round {round_}: engine alone {before:.1f} before, {after:.1f} after sheets/s")
                print(f"  end to end {ratio['end_to_end']:.1f} sheets/s = {ratios[-1]:.2f}x the faster engine timing "
                      f"({ratio['end_to_end'] / mean:.2f}x their mean; target >= 1.4x); processing_sheets alone "
                      f"{ratio['processing']:.1f} sheets/s = {ratio['processing'] / engine_rate:.2f}x")
                # What two processes get from this machine at all, and the
                # share of it the server turns into sheets.
                ceiling = pair / engine_rate
                efficiencies.append(ratios[-1] / ceiling)
                engine_cpu = min(cpu_per_sheet[-2:])
                print(f"  two bare engine processes at once: {pair:.1f} sheets/s = {ceiling:.2f}x (this machine's "
                      f"ceiling for 2 processes); end to end = {efficiencies[-1]:.0%} of it")
                print(f"  worker CPU {ratio['worker_cpu_ms']:.1f} ms per sheet against the engine alone's "
                      f"{engine_cpu:.1f} ms (+{ratio['worker_cpu_ms'] / engine_cpu - 1:.0%}: storing, messages, "
                      f"the stages around the reading, and two processes sharing the machine)")
        finally:
            servers.stop()
            servers.drop_db()
    if len(ratios) > 1:
        print(f"end to end / faster engine timing over {len(ratios)} rounds: median {median(ratios):.2f}x, "
              f"min {min(ratios):.2f}x, max {max(ratios):.2f}x; share of the 2-process ceiling: median "
              f"{median(efficiencies):.0%}")
    return 0 if ok else 1


def two_engines(archive: Path, template: str, count: int) -> float:
    """Sheets/s of two engine processes reading the first ``count`` pages of
    ``archive`` at the same time (no server, no database): what this
    machine's two cores give two processes right now."""
    import subprocess

    command = [sys.executable, __file__, "--engine-pass", str(archive), "--template", template,
               "--sheets", str(count)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    # Each child times its own reading (after the same start-up), and the
    # slower one sets the pace.
    seconds = [float(child.communicate()[0]) for child in children]
    return 2 * count / max(seconds)


def engine_pass(archive: str, template_name: str, count: int) -> int:
    """The child of ``two_engines``: read ``count`` pages of ``archive``."""
    from batches.omr import load_template, reader

    template = load_template(template_name)
    with zipfile.ZipFile(archive) as z:
        pages = [z.read(name) for name in z.namelist()[:count]]
    t = time.perf_counter()
    for data in pages:
        reader.read_image_bytes(data, template)
    print(time.perf_counter() - t)
    return 0


def one_batch(servers: Servers, archive: bytes) -> tuple[dict, bool]:
    """Upload ``archive``, follow its stream to the end, print the figures;
    returns the rates (sheets/s) end to end and of processing_sheets."""
    delays: list[float] = []
    stage_start: dict[str, float] = {}

    replayed = 0
    connected = float("inf")

    def on_event(event: dict) -> None:
        nonlocal replayed
        now = time.time()
        sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        if sent < connected - 0.001:  # published before the stream was asked for (the upload's own): a replay
            replayed += 1
        else:
            delays.append((now - sent) * 1000)
        stage_start.setdefault(event["stage"], now)

    workers = servers.worker_children()
    t_upload = time.perf_counter()
    links = servers.upload(archive)
    accepted = time.perf_counter()
    cpu_before = cpu_seconds(workers)
    connected = time.time()
    _headers, events, _comments = servers.stream(links["batch_id"], on_event=on_event, timeout=3600)
    done = time.perf_counter()
    worker_cpu = cpu_seconds(workers) - cpu_before
    last = events[-1]
    wall = done - accepted
    rate = last["sheets_processed"] / wall
    print(f"  upload {accepted - t_upload:.1f} s ({len(archive) / 1e6 / (accepted - t_upload):.0f} MB/s); "
          f"accepted -> {last['stage']}: {wall:.1f} s ({last['sheets_processed']} processed, "
          f"{last['sheets_failed']} failed), {len(events)} events")
    processing = 0.0
    if "processing_sheets" in stage_start and "collecting_results" in stage_start:
        processing = last["sheets_processed"] / (stage_start["collecting_results"] - stage_start["processing_sheets"])
    stages = list(stage_start)
    print("  " + ", ".join(f"{a} {stage_start[b] - stage_start[a]:.1f} s"
                           for a, b in zip(stages, stages[1:], strict=False)))
    print(f"  publish -> SSE client: p50 {median(delays):.1f} ms, p95 {percentile(delays, 0.95):.1f} ms, "
          f"max {max(delays):.1f} ms over {len(delays)} live events ({replayed} replayed from before the stream "
          "was opened are left out; event timestamps are in ms)")
    return ({"end_to_end": rate, "processing": processing,
             "worker_cpu_ms": worker_cpu * 1000 / max(1, last["sheets_processed"])}, last["stage"] == "completed")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


if __name__ == "__main__":
    sys.exit(main())
