"""Resumable (tus) upload throughput and the web process's memory.

For each size: a fresh Daphne (the project's own start-up, as in the
end-to-end test, with the in-process broker so nothing is queued in Redis)
receives a file of random bytes through the tus protocol on loopback, in
chunks of ``--chunk-mb``, with the whole file's SHA-256 declared (the server
checks it at the end). Prints MB/s from creation to the last chunk's answer,
the same file copied with ``shutil.copyfile`` + fsync on the same disk, the
ratio of the two, and the web process's peak resident memory (VmHWM) after
the upload, next to its peak before it (started, one tiny upload made). Target: the peak is flat,
independent of the file's size (it depends on the chunk size).

    python bench/upload_throughput.py                 # 64 and 256 MB, short
    python bench/upload_throughput.py --mb 256 1024   # the 1 GB figure
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omrsite.settings")

import django  # noqa: E402

django.setup()  # the end-to-end helpers import the models

from batches.uploads.tus import metadata_header  # noqa: E402
from tests.test_end_to_end import Servers  # noqa: E402

TUS = {"Tus-Resumable": "1.0.0"}
PIECE = 8 * 1024 * 1024


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process so far (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(PIECE, left))
            digest.update(piece)
            handle.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def start_web(servers: Servers, timeout: float = 60) -> None:
    servers.start_web()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if servers.request("OPTIONS", "/api/uploads/", timeout=5)[0] == 204:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"web server did not start:\n{servers.logs()}")


def warm_up(servers: Servers) -> None:
    """One small upload created and terminated: the first request's imports
    (templates, the engine's modules) are not counted as upload time."""
    status, headers, _ = servers.request("POST", "/api/uploads/", b"", {
        **TUS, "Upload-Length": "1", "Upload-Metadata": metadata_header({"filename": "warm.zip"})})
    assert status == 201, status
    assert servers.request("DELETE", urlparse(headers["Location"]).path, headers=TUS)[0] == 204


def stop_web(servers: Servers) -> None:
    os.killpg(servers.web.pid, signal.SIGTERM)
    servers.web.wait(20)


def tus_upload(servers: Servers, path: Path, size: int, sha256: str, chunk: int) -> float:
    """Upload ``path`` through tus on one keep-alive connection; seconds taken."""
    conn = http.client.HTTPConnection("127.0.0.1", servers.port, timeout=600)
    auth = {"Authorization": f"Bearer {servers.token}"}
    started = time.perf_counter()
    conn.request("POST", "/api/uploads/", b"", {**TUS, **auth, "Upload-Length": str(size),
                                               "Upload-Metadata": metadata_header(
                                                   {"filename": "bench.zip", "has_qr": "false", "sha256": sha256})})
    response = conn.getresponse()
    response.read()
    assert response.status == 201, response.status
    url = urlparse(response.getheader("Location")).path
    offset = 0
    with open(path, "rb") as handle:
        while offset < size:
            body = handle.read(chunk)
            conn.request("PATCH", url, body, {**TUS, **auth, "Content-Type": "application/offset+octet-stream",
                                              "Upload-Offset": str(offset)})
            response = conn.getresponse()
            text = response.read()
            assert response.status == 204, (response.status, text)
            offset = int(response.getheader("Upload-Offset"))
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def plain_copy(source: Path, target: Path) -> float:
    started = time.perf_counter()
    shutil.copyfile(source, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, nargs="+", default=[64, 256], help="file sizes in MB (one run each)")
    parser.add_argument("--chunk-mb", type=int, default=16, help="tus chunk size in MB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="omr-upload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        servers = Servers(tmp)
        servers.env.update({"OMR_BROKER": "stub", "OMR_CHANNEL_LAYER": "memory", "LOG_LEVEL": "WARNING",
                            "OMR_TUS_MAX_CHUNK_MB": str(max(64, args.chunk_mb))})
        servers.manage("migrate", "--noinput")
        servers.manage("ensure_staff_user", "--username", "bench")
        servers.token = servers.manage("create_api_token", "bench").strip()
        print(f"tus upload on loopback to one Daphne process, chunks of {args.chunk_mb} MB, "
              f"whole-file SHA-256 checked by the server; copy = shutil.copyfile + fsync, same disk")
        print(f"{'size':>8} {'tus MB/s':>9} {'copy MB/s':>10} {'ratio':>6} {'web peak RSS':>13} {'before':>12}")
        try:
            for mb in args.mb:
                size = mb * 1024 * 1024
                source = tmp / "source.bin"
                sha256 = make_file(source, size)
                start_web(servers)
                warm_up(servers)
                idle = vm_hwm_mb(servers.web.pid)
                try:
                    seconds = tus_upload(servers, source, size, sha256, args.chunk_mb * 1024 * 1024)
                    peak = vm_hwm_mb(servers.web.pid)
                finally:
                    stop_web(servers)
                stored = list((tmp / "media" / "batches").glob("*/upload/original.zip"))
                assert len(stored) == 1 and stored[0].stat().st_size == size, stored
                copy_seconds = plain_copy(source, tmp / "copy.bin")
                tus_rate, copy_rate = size / 1e6 / seconds, size / 1e6 / copy_seconds
                print(f"{mb:>5} MB {tus_rate:>9.0f} {copy_rate:>10.0f} {tus_rate / copy_rate:>6.2f} "
                      f"{peak:>10.0f} MB {idle:>9.0f} MB", flush=True)
                for leftover in [source, tmp / "copy.bin", *stored]:
                    leftover.unlink()
        finally:
            if servers.web is not None and servers.web.poll() is None:
                stop_web(servers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
