"""End to end with real parts: Redis (a database number of its own), a real
``rundramatiq`` worker with two processes, a real Daphne server on a free port,
and an HTTP client reading the SSE stream byte by byte.

Also W1: a worker process killed with SIGKILL mid-batch, its messages given
back by the broker; and W7: the workers stopped with SIGTERM in the middle of
a batch and started again. Each batch finishes with every page read once.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import TEMPLATE, make_zip, sheets_zip

ROOT = Path(__file__).resolve().parents[1]
REDIS_DB = 15  # a database of its own; each run also has its own key namespace
ORDER = ["uploading", "validating", "extracting", "organizing_qr", "creating_sheets", "processing_sheets",
         "collecting_results", "generating_csv", "loading_database", "cleanup", "completed"]

pytestmark = pytest.mark.slow


def redis_url() -> str:
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(base)
    return f"{parsed.scheme}://{parsed.netloc}/{REDIS_DB}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(tmp: Path) -> tuple[str, callable]:
    """A database for the servers: a fresh PostgreSQL database when the suite
    runs on PostgreSQL, else an SQLite file. Returns the URL and a drop function."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{tmp / 'e2e.sqlite3'}", lambda: None
    import psycopg

    parsed = urlparse(url)
    name = f"omr_e2e_{uuid.uuid4().hex[:10]}"
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return parsed._replace(path=f"/{name}").geturl(), drop


class Servers:
    """The worker and web processes, started and stopped by their process ids."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.db_url, self.drop_db = database_url(tmp)
        # Test runs on one machine may share Redis: keys of their own, so one
        # run's workers never take another run's messages.
        self.namespace = f"omr-e2e-{uuid.uuid4().hex[:12]}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OMR_", "DJANGO_", "PYTEST"))},
            "DATABASE_URL": self.db_url,
            "REDIS_URL": redis_url(),
            "MEDIA_ROOT": str(tmp / "media"),
            "OMR_VAR_DIR": str(tmp),
            "SECRET_KEY": "end-to-end-test-secret-key-" + "x" * 30,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "OMR_REDIS_NAMESPACE": self.namespace,
            "OMR_BROKER": "redis",
            "OMR_CHANNEL_LAYER": "redis",
            "OMR_HEARTBEAT_INTERVAL": "1",
            "OMR_PROGRESS_INTERVAL": "0.3",
            "OMR_CHUNK_SIZE": "2",
            "PYTHONUNBUFFERED": "1",
            # A worker killed with SIGKILL: its messages come back within seconds.
            "OMR_BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
            "OMR_BROKER_MAINTENANCE_CHANCE": "1000000",
        }
        self.worker: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.token = ""

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, username: str | None = None) -> dict:
        """Migrate, make the staff login (named ``username`` with an API token in
        ``self.token``, else as the environment says), start the web server and
        the worker, and return the health answer once all is up."""
        self.manage("migrate", "--noinput")
        if username:
            self.manage("ensure_staff_user", "--username", username)
            self.token = self.manage("create_api_token", username).strip()
        else:
            self.manage("ensure_staff_user")
        self.start_web()
        self.start_worker()
        return self.wait_healthy()

    def start_worker(self) -> None:
        log = (self.tmp / "worker.log").open("ab")
        self.worker = subprocess.Popen(
            [sys.executable, "manage.py", "rundramatiq", "--processes", "2", "--threads", "1"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_worker(self, sig=signal.SIGTERM, timeout: float = 60) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        # To the main process only, as bin/serve does: it stops its worker
        # processes gracefully. (A signal to each child as well counts as a
        # second one, which makes Dramatiq kill them at once.)
        self.worker.send_signal(sig)
        try:
            self.worker.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(10)

    def worker_children(self) -> list[int]:
        """Process ids of the worker's child processes (Linux /proc)."""
        pids = []
        for task in Path(f"/proc/{self.worker.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def start_web(self) -> None:
        log = (self.tmp / "web.log").open("ab")
        self.web = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "omrsite.asgi:application"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_web(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        """Stop Daphne (``start_web`` starts it again on the same port)."""
        if self.web is None or self.web.poll() is not None:
            return
        os.killpg(self.web.pid, sig)
        try:
            self.web.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.web.pid, signal.SIGKILL)
            self.web.wait(10)

    def stop(self) -> None:
        self.stop_worker()
        self.stop_web()

    def logs(self) -> str:
        return "".join((self.tmp / n).read_text(errors="replace")[-4000:] for n in ("worker.log", "web.log")
                       if (self.tmp / n).exists())

    # ------------------------------------------------------------ HTTP

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A connection to where clients talk to the servers (a proxy may stand in front)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {self.token}", **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def wait_healthy(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            try:
                status, _headers, raw = self.request("GET", "/api/health", timeout=5)
                body = json.loads(raw)
                if status == 200:
                    return body
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.3)
        raise AssertionError(f"not healthy: {body}\n{self.logs()}")

    def upload(self, data: bytes, name: str = "scans.zip") -> dict:
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("template", TEMPLATE), ("has_qr", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                     f"Content-Type: application/zip\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, _headers, raw = self.request("POST", "/api/batches/upload", b"".join(parts),
                                             {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 202, raw
        return json.loads(raw)

    def stream(self, batch_id: str, last_event_id: int | None = None, on_event=None, timeout: float = 120):
        """Read the SSE stream to its end; returns (headers, events, comments)."""
        conn = self.connection(30)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        conn.request("GET", f"/api/batches/{batch_id}/stream", headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        events, comments, frame = [], [], {}
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert time.monotonic() < deadline, f"stream still open after {timeout} s: {events[-1:]}\n{self.logs()}"
                line = response.readline()
                if not line:
                    break  # the server ended the response
                text = line.decode().rstrip("\n")
                if text == "":
                    if frame:
                        assert set(frame) == {"id", "event", "data"}, frame  # never an empty event
                        event = json.loads(frame["data"])
                        assert event["id"] == int(frame["id"]) and frame["event"] == "progress"
                        events.append(event)
                        if on_event:
                            on_event(event)
                    frame = {}
                elif text.startswith(":"):
                    comments.append(text)
                else:
                    key, _, value = text.partition(": ")
                    frame[key] = value
        finally:
            conn.close()
        return dict(response.getheaders()), events, comments


@contextlib.contextmanager
def running_servers(tmp: Path, username: str | None = None, servers_class: type[Servers] = Servers, **env: str):
    """``servers_class`` started (with ``env`` added to theirs) for the length of the
    block, then stopped, their database dropped and their Redis keys removed.
    Fails at once when Redis does not answer. The logs are printed at the end
    (pytest shows them only for a failed test)."""
    import redis

    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis at {redis_url()} (bin/ensure-redis starts one)", pytrace=False)
    s = servers_class(tmp)
    s.env.update(env)
    try:
        s.start(username)
        yield s
    finally:
        s.stop()
        s.drop_db()
        for key in client.scan_iter(f"{s.namespace}*"):
            client.delete(key)
        client.close()
        print(s.logs())


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with running_servers(tmp_path_factory.mktemp("e2e"), "e2e") as s:
        yield s


def check_events(events: list[dict]) -> None:
    stages = [e["stage"] for e in events]
    assert list(dict.fromkeys(stages)) == ORDER, stages
    assert all(ORDER.index(a) <= ORDER.index(b) for a, b in zip(stages, stages[1:], strict=False))
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    overall = [e["overall_percentage"] for e in events]
    assert overall == sorted(overall), overall
    assert stages[-1] == "completed" and overall[-1] == 100.0


def test_upload_stream_and_results_through_real_servers(servers):
    # Given a ZIP of 20 simulated sheets
    data, sheets = sheets_zip(20)

    # When it is uploaded over HTTP and the stream is read to its end
    links = servers.upload(data)
    headers, events, _comments = servers.stream(links["batch_id"])

    # Then every stage came, in order, ids increasing, the bar never going back, completed last
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    check_events(events)
    assert events[-1]["sheets_processed"] == 20 and events[-1]["sheets_failed"] == 0

    # And a second connection with Last-Event-ID gets exactly the events after it
    middle = events[len(events) // 2]["id"]
    _headers, rest, _comments = servers.stream(links["batch_id"], last_event_id=middle)
    assert rest == [e for e in events if e["id"] > middle]

    # And the CSV holds the simulator's ground truth
    status, csv_headers, raw = servers.request("GET", urlparse(links["results_url"]).path)
    assert status == 200 and csv_headers["X-Content-Type-Options"] == "nosniff"
    assert csv_headers["Content-Disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["source_file"] for r in rows] == [s.name for s in sheets]
    for row, sheet in zip(rows, sheets, strict=True):
        assert row["student"] == sheet.student
        assert {f: row[f] for f in sheet.answers} == sheet.answers, sheet.name

    # And the status endpoint agrees
    status, _h, raw = servers.request("GET", urlparse(links["status_url"]).path)
    body = json.loads(raw)
    assert status == 200 and body["stage"] == "completed" and body["sheets_processed"] == 20


def test_each_worker_process_warms_the_engine_up_before_taking_messages(servers):
    log = (servers.tmp / "worker.log").read_text(errors="replace")
    assert "Engine warm-up failed" not in log
    assert log.count("Engine warmed up in") >= 2, log[-2000:]  # one per process


def test_w7_workers_stopped_mid_batch_and_started_again(servers):
    # Given a batch of 200 pages being read (enough work that the workers are
    # still busy when the stop takes effect)
    data, sheets = sheets_zip(20)
    data = make_zip([(f"copy{k}/{s.name}", s.jpeg) for k in range(10) for s in sheets])
    links = servers.upload(data)
    stopped = {}

    def on_event(event):
        # When the workers get SIGTERM as soon as the sheets are dispatched
        # (each finishes the message in hand and hands the rest back)
        if event["stage"] == "processing_sheets" and not stopped:
            servers.stop_worker(signal.SIGTERM)
            _s, _h, raw = servers.request("GET", urlparse(links["status_url"]).path)
            stopped.update(json.loads(raw))
            # And start again
            servers.start_worker()

    _headers, events, _comments = servers.stream(links["batch_id"], on_event=on_event)

    # Then the batch was caught mid-way, and still finished with every page read once
    assert stopped["stage"] == "processing_sheets" and stopped["sheets_processed"] < 200, stopped
    check_events(events)
    assert events[-1]["sheets_processed"] == 200 and events[-1]["sheets_failed"] == 0
    status, _h, raw = servers.request("GET", urlparse(links["results_url"]).path)
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == 200 and all(r["status"] == "done" for r in rows)
    servers.wait_healthy()


def test_w1_workers_killed_mid_message(servers):
    # Given a batch of 40 pages being read
    data, sheets = sheets_zip(20)
    data = make_zip([(s.name, s.jpeg) for s in sheets] + [(f"b/{s.name}", s.jpeg) for s in sheets])
    links = servers.upload(data)
    killed = {}

    def on_event(event):
        # When the worker processes are killed (SIGKILL) while one of them is in
        # the middle of a message (preparing the batch: reading is too quick to
        # catch reliably)
        if event["stage"] == "organizing_qr" and not killed:
            for pid in servers.worker_children():
                os.kill(pid, signal.SIGKILL)
            _s, _h, raw = servers.request("GET", urlparse(links["status_url"]).path)
            killed.update(json.loads(raw))
            # Dramatiq's main process stops when its children die; start again.
            servers.worker.wait(60)
            servers.start_worker()

    _headers, events, _comments = servers.stream(links["batch_id"], on_event=on_event)

    # Then the broker gave the message back, the batch went on from where it
    # was, and every page was read exactly once
    assert killed["stage"] != "completed" and killed["sheets_processed"] == 0, killed
    check_events(events)
    assert events[-1]["sheets_processed"] == 40 and events[-1]["sheets_total"] == 40
    assert events[-1]["sheets_failed"] == 0
    status, _h, raw = servers.request("GET", urlparse(links["results_url"]).path)
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == 40 and all(r["status"] == "done" for r in rows)
    servers.wait_healthy()
