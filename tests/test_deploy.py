"""The production set-up of ``deploy/``, run for real: Debian's nginx with the
site that ``deploy/render.py`` writes (TLS with a throw-away certificate, on
free ports), in front of two Daphne processes started with the command of
``omr-web@.service``, a Dramatiq worker started with the command of
``omr-worker.service``, Redis, and the settings of ``deploy/omr.env.example``
(``SECURE_SSL=1``, ``BEHIND_PROXY=1``).

It shows that a huge request body is refused by nginx before a web process
sees it, that a tus upload with chunks of the full allowed size goes through
and becomes a batch, that the batch's streams (Python and curl clients, and
the browser page) follow it live through nginx, and that when the web process
a stream is on is killed, the client reconnects through nginx to the other
one and resumes with ``Last-Event-ID``, missing no event; and that nginx
serves the static files itself. Needs ``nginx`` and ``openssl``
(``bin/setup --browser`` installs them) and a Redis, like the end-to-end test.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import select
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from .conftest import TEMPLATE, make_zip, simulated_sheet
from .test_end_to_end import ROOT, Servers, free_port, redis_url, running_servers

pytestmark = pytest.mark.slow

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GB = 1024**3
MB = 1024**2

if not Path(NGINX).exists():
    pytest.fail("nginx missing (bin/setup --browser installs it)", pytrace=False)

sys.path.insert(0, str(DEPLOY))
import render  # noqa: E402  (deploy/render.py: standard library only)

sys.path.remove(str(DEPLOY))

# What Debian's /etc/nginx/nginx.conf gives a site in sites-enabled/, with
# every path in the test's folder so nginx runs without root and leaves
# nothing behind; its access log also says which web process answered and
# the Last-Event-ID a stream was asked with.
NGINX_MAIN = """\
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
daemon off;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format upstreams '$remote_addr "$request" $status $body_bytes_sent request_length=$request_length '
                         'upstream=$upstream_addr last_event_id="$http_last_event_id"';
    access_log {tmp}/nginx-access.log upstreams;
    gzip on;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    include {site};
}}
"""


def exec_start(unit: Path) -> list[str]:
    """The command line of a rendered systemd unit."""
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart="))
    raise AssertionError(f"no ExecStart in {unit}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class ProxiedServers(Servers):
    """``Servers`` behind nginx: clients talk HTTPS to nginx on ``self.port``;
    nginx talks to two Daphne processes on ``self.web_ports``."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.port = free_port()
        self.http_port = free_port()
        self.web_ports = [free_port(), free_port()]
        self.webs: dict[int, subprocess.Popen] = {}
        self.nginx: subprocess.Popen | None = None
        self.static_root = tmp / "static"
        # The documented production settings, with this test's places and ports.
        env_file = tmp / "omr.env"
        overrides = {
            "SECRET_KEY": "deploy-test-" + os.urandom(24).hex(),
            "ALLOWED_HOSTS": "127.0.0.1",
            "CSRF_TRUSTED_ORIGINS": f"https://127.0.0.1:{self.port}",
            "DATABASE_URL": self.db_url,
            "REDIS_URL": redis_url(),
            "OMR_VAR_DIR": str(tmp),
            "MEDIA_ROOT": str(tmp / "media"),
            "STATIC_ROOT": str(self.static_root),
        }
        lines = []
        for line in (DEPLOY / "omr.env.example").read_text().splitlines():
            key = line.partition("=")[0]
            lines.append(f"{key}={overrides.pop(key)}" if key in overrides and "=" in line else line)
        assert not overrides, f"omr.env.example does not set {sorted(overrides)}"
        env_file.write_text("\n".join(lines) + "\n")
        self.env.update(render.read_env_file(env_file))
        assert self.env["SECURE_SSL"] == "1" and self.env["BEHIND_PROXY"] == "1"
        self.rendered = tmp / "rendered"
        # A throw-away certificate for 127.0.0.1, which the clients trust.
        self.certificate = tmp / "tls.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(tmp / "tls.key"), "-out", str(self.certificate)],
                       check=True, capture_output=True, timeout=60)
        render.render(render.build_parser().parse_args([
                     "--env", str(env_file), "--out", str(self.rendered), "--root", str(ROOT),
                     "--listen-https", f"127.0.0.1:{self.port}", "--listen-http", f"127.0.0.1:{self.http_port}",
                     "--web-ports", *map(str, self.web_ports), "--nginx-dir", str(self.rendered / "nginx"),
                     "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key"),
                     "--worker-processes", "2"]))
        self.tls = ssl.create_default_context(cafile=str(self.certificate))

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def connection(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.tls)

    # ------------------------------------------------------------ processes

    def start_web(self) -> None:
        self.manage("collectstatic", "--noinput")
        for port in self.web_ports:
            self.start_daphne(port)
        for port in self.web_ports:
            self.wait_listening(port)
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(user=user, tmp=self.tmp, site=self.rendered / "nginx" / "omr.conf"))
        log = (self.tmp / "nginx.log").open("ab")
        command = [NGINX, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "nginx-error.log")]
        self.nginx = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_listening(self.port)

    def start_daphne(self, port: int) -> None:
        """One web process, started as ``omr-web@PORT.service`` starts it, with
        an access log of its own."""
        command = [part.replace("%i", str(port)) for part in exec_start(self.rendered / "systemd" / "omr-web@.service")]
        command[-1:-1] = ["--access-log", str(self.access_log(port))]
        log = (self.tmp / f"web-{port}.log").open("ab")
        self.webs[port] = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)

    def access_log(self, port: int) -> Path:
        return self.tmp / f"daphne-{port}-access.log"

    def wait_listening(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"nothing listens on {port}\n{self.logs()}")

    def start_worker(self) -> None:
        log = (self.tmp / "worker.log").open("ab")
        self.worker = subprocess.Popen(exec_start(self.rendered / "systemd" / "omr-worker.service"), cwd=ROOT,
                                       env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_web(self, port: int) -> None:
        self.webs[port].send_signal(signal.SIGKILL)
        self.webs[port].wait(10)

    def stop_web(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        for process in [self.nginx, *self.webs.values()]:
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def logs(self) -> str:
        names = ["worker.log", "nginx-error.log", *(f"web-{port}.log" for port in self.web_ports)]
        return "".join(f"--- {n}\n" + (self.tmp / n).read_text(errors="replace")[-3000:] for n in names
                       if (self.tmp / n).exists())

    def daphne_requests(self, since: dict[int, int] | None = None) -> str:
        """The web processes' access logs (after the sizes in ``since``)."""
        return "".join(self.access_log(p).read_text()[(since or {}).get(p, 0):] for p in self.web_ports
                       if self.access_log(p).exists())

    def access_log_sizes(self) -> dict[int, int]:
        return {p: len(self.access_log(p).read_text()) if self.access_log(p).exists() else 0 for p in self.web_ports}


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    with running_servers(tmp_path_factory.mktemp("deploy"), "deploy", servers_class=ProxiedServers,
                         OMR_CHUNK_SIZE="1", OMR_STAFF_USER="deploy", OMR_STAFF_PASSWORD="deploy-test-pw-1") as s:
        yield s


# ---------------------------------------------------------------- a huge body


def nginx_log(servers: ProxiedServers) -> str:
    return (servers.tmp / "nginx-access.log").read_text()


def once_logged(read, holds, timeout: float = 10) -> str:
    """The log ``read()`` returns, once ``holds(text)``: a server writes its
    log line after the answer is on its way, so the client may be first."""
    deadline = time.monotonic() + timeout
    while not holds(text := read()):
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.05)
    return text


def answered_by(line: str) -> str:
    """The upstream that gave the answer logged in ``line`` (the last one
    tried; ``omr_web`` when none was up)."""
    return line.split(" upstream=", 1)[1].split(" last_event_id=")[0].split(", ")[-1]


def send_huge_body(servers: ProxiedServers, path: str, size: int, *, chunked: bool = False, method: str = "POST",
                   content_type: str = "application/octet-stream") -> tuple[int, int, bytes]:
    """Send a request with a ``size``-byte body made on the fly (never held
    whole anywhere), stopping as soon as an answer comes. Returns the status,
    the bytes of body sent and the answer's head."""
    raw = socket.create_connection(("127.0.0.1", servers.port), timeout=30)
    sock = servers.tls.wrap_socket(raw, server_hostname="127.0.0.1")
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{servers.port}", f"Authorization: Bearer {servers.token}",
            f"Content-Type: {content_type}"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    block = b"\0" * MB
    sent = 0
    answer = b""
    try:
        while sent < size and not answer:
            readable, _w, _x = select.select([sock], [], [], 0)
            if readable or sock.pending():
                # TLS records that carry no data (session tickets) wake select too
                sock.setblocking(False)
                try:
                    answer = sock.recv(65536)
                    if not answer:
                        break  # closed
                except ssl.SSLWantReadError:
                    pass
                finally:
                    sock.settimeout(30)
                if answer:
                    break  # the answer came before the body was done
            piece = block[: min(len(block), size - sent)]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # nginx closed the connection after answering
    deadline = time.monotonic() + 30
    while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not data:
            break
        answer += data
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent, answer.split(b"\r\n\r\n")[0]


def test_a_5_gb_upload_is_refused_by_nginx_and_never_reaches_a_web_process(proxied):
    before = {port: rss_kb(p.pid) for port, p in proxied.webs.items()}
    logged_before = proxied.access_log_sizes()

    # When a script posts 5 GB to the plain upload URL (over the upload limit)
    status, sent, head = send_huge_body(proxied, "/api/batches/upload", 5 * GB,
                                        content_type="multipart/form-data; boundary=x")
    # Then nginx answers 413 at once, after little of the body
    assert status == 413, head
    assert sent < 512 * MB, sent

    # And 5 GB sent without a length to any other URL is stopped at nginx's
    # small cap, after about a megabyte
    status_chunked, sent_chunked, head = send_huge_body(proxied, "/accounts/login/", 5 * GB, chunked=True)
    assert status_chunked == 413, head
    assert sent_chunked < 512 * MB, sent_chunked

    # And neither web process saw either request or grew
    time.sleep(0.5)
    after = {port: rss_kb(p.pid) for port, p in proxied.webs.items()}
    print(f"Daphne RSS before/after the 5 GB attempts (kB): {before} -> {after}; "
          f"body bytes sent before the 413: {sent:,} (with a length), {sent_chunked:,} (chunked)")
    for port in proxied.web_ports:
        assert after[port] - before[port] < 16 * 1024, (port, before, after)
    once_logged(lambda: nginx_log(proxied), lambda text: '"POST /api/batches/upload HTTP/1.1" 413 ' in text
                and '"POST /accounts/login/ HTTP/1.1" 413 ' in text)
    # (while a small upload, sent after them, does reach a web process, and
    # its log says so)
    status, _sent, head = send_huge_body(proxied, "/api/batches/upload", 1000,
                                         content_type="multipart/form-data; boundary=x")
    assert status == 400, head
    seen = once_logged(lambda: proxied.daphne_requests(since=logged_before), lambda text: "/api/batches/upload" in text)
    assert seen.count("/api/batches/upload") == 1 and '"POST /api/batches/upload" 400' in seen, seen
    assert "/accounts/login/" not in seen, seen


def test_a_tus_chunk_over_the_allowed_size_is_refused_by_nginx(proxied):
    status, _sent, head = send_huge_body(proxied, "/api/uploads/00000000-0000-0000-0000-000000000000",
                                         66 * MB, method="PATCH", content_type="application/offset+octet-stream")
    assert status == 413, head
    once_logged(lambda: nginx_log(proxied), lambda text: "PATCH /api/uploads/00000000" in text)
    assert "/api/uploads/00000000" not in proxied.daphne_requests()


# ---------------------------------------------------------------- static files


def test_static_files_are_served_by_nginx(proxied):
    vendored = ROOT / "static" / "vendor" / "htmx" / "htmx-2.0.10.min.js"
    conn = proxied.connection(10)
    conn.request("GET", "/static/vendor/htmx/htmx-2.0.10.min.js")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200
    assert body == vendored.read_bytes()
    assert response.getheader("Content-Type") == "application/javascript"
    assert response.getheader("Expires") and "public" in response.getheader("Cache-Control")
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    # Django would have added its own headers; nginx passed nothing on, and
    # no web process logged it
    assert response.getheader("X-Frame-Options") is None
    logged = once_logged(lambda: nginx_log(proxied),
                         lambda text: '"GET /static/vendor/htmx/htmx-2.0.10.min.js HTTP/1.1" 200 ' in text)
    assert "/static/" not in proxied.daphne_requests()
    assert all(line.endswith('upstream=- last_event_id="-"') for line in logged.splitlines()
               if "/static/" in line)
    # A name that collectstatic did not write is nginx's 404, not passed on
    conn = proxied.connection(10)
    conn.request("GET", "/static/vendor/htmx/missing.js")
    response = conn.getresponse()
    response.read()
    assert response.status == 404
    once_logged(lambda: nginx_log(proxied), lambda text: "missing.js" in text)
    assert "missing.js" not in proxied.daphne_requests()


# ---------------------------------------------------------------- tus upload and streams


class StreamFollower(threading.Thread):
    """Follows a batch's API stream through nginx to its terminal event; when
    the connection breaks first, connects again with ``Last-Event-ID``."""

    def __init__(self, servers: ProxiedServers, batch_id: str, with_curl: bool = False):
        super().__init__(daemon=True)
        self.servers, self.batch_id, self.with_curl = servers, batch_id, with_curl
        self.path = f"/api/batches/{batch_id}/stream"
        self.events: list[dict] = []
        self.received_at: list[float] = []  # wall-clock time each event arrived
        self.connects: list[float] = []  # wall-clock time each response started
        self.cuts: list[float] = []  # wall-clock time each connection broke
        self.had_at_cut: list[int] = []  # events received before each break
        self.last_event_ids_sent: list[int | None] = []
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                last = self.events[-1]["id"] if self.events else None
                self.last_event_ids_sent.append(last)
                finished = self.follow_curl(last) if self.with_curl else self.follow_python(last)
                if finished:
                    return
                self.cuts.append(time.time())
                self.had_at_cut.append(len(self.events))
            raise AssertionError("stream did not finish")
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.started.set()

    def on_frame(self, frame: dict) -> bool:
        """Record one frame; True after the terminal event."""
        assert set(frame) == {"id", "event", "data"}, frame
        event = json.loads(frame["data"])
        assert event["id"] == int(frame["id"]) and frame["event"] == "progress"
        self.events.append(event)
        self.received_at.append(time.time())
        return event["stage"] in ("completed", "failed")

    def lines_to_frames(self, lines):
        frame: dict = {}
        for line in lines:
            text = line.decode().rstrip("\r\n")
            if text == "":
                if frame and self.on_frame(frame):
                    return True
                frame = {}
            elif text.startswith(":"):
                if not self.started.is_set() or len(self.connects) < len(self.last_event_ids_sent):
                    self.connects.append(time.time())
                    self.started.set()
            else:
                key, _, value = text.partition(": ")
                frame[key] = value
        return False

    def follow_python(self, last: int | None) -> bool:
        conn = self.servers.connection(60)
        headers = {"Authorization": f"Bearer {self.servers.token}", "Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        try:
            conn.request("GET", self.path, headers=headers)
            response = conn.getresponse()
            assert response.status == 200, response.status
            assert response.getheader("Content-Type").startswith("text/event-stream")
            return self.lines_to_frames(iter(response.readline, b""))
        except (http.client.HTTPException, OSError, ValueError):
            return False  # the connection broke
        finally:
            conn.close()

    def follow_curl(self, last: int | None) -> bool:
        command = ["curl", "-N", "-sS", "--http1.1", "--cacert", str(self.servers.certificate),
                   "-H", f"Authorization: Bearer {self.servers.token}", "-H", "Accept: text/event-stream"]
        if last is not None:
            command += ["-H", f"Last-Event-ID: {last}"]
        process = subprocess.Popen([*command, self.servers.base_url + self.path], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        try:
            return self.lines_to_frames(iter(process.stdout.readline, b""))
        finally:
            process.kill()
            process.wait(10)


def test_tus_upload_becomes_a_batch_whose_streams_survive_a_killed_web_process(proxied, tmp_path, monkeypatch):
    from tusclient import client

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(proxied.certificate))  # tuspy verifies nginx's certificate

    # Given a ZIP of 40 sheets, padded past one 64 MB chunk with an entry the
    # server skips (a Mac's resource fork), and a tus client that sends chunks
    # of the largest size the server takes
    chunk = 64 * MB
    assert f"OMR_TUS_MAX_CHUNK_MB={chunk // MB}" in (DEPLOY / "omr.env.example").read_text()
    sheets = [simulated_sheet(i) for i in range(20)]
    entries = [(f"{k}/{s.name}", s.jpeg) for k in ("a", "b") for s in sheets]
    data = make_zip([*entries, ("__MACOSX/._padding", b"\0" * (chunk + 4 * MB))])
    assert chunk < len(data) < 2 * chunk
    source = tmp_path / "scans.zip"
    source.write_bytes(data)
    tus = client.TusClient(f"{proxied.base_url}/api/uploads/", headers={"Authorization": f"Bearer {proxied.token}"})
    uploader = tus.uploader(str(source), chunk_size=chunk, upload_checksum=True,
                            metadata={"filename": "scans.zip", "template": TEMPLATE, "has_qr": "true"})

    # When the upload is created, its batch exists at once and four clients
    # follow its stream through nginx: two in Python, two with curl, opened
    # one after the other, so each web process has one of each
    uploader.set_url(uploader.create_url())
    assert uploader.url.startswith(f"{proxied.base_url}/api/uploads/"), uploader.url  # scheme and host kept
    conn = proxied.connection(10)
    conn.request("GET", urlparse(uploader.url).path, headers={"Authorization": f"Bearer {proxied.token}"})
    response = conn.getresponse()
    batch_id = json.loads(response.read())["batch_id"]
    followers = [StreamFollower(proxied, batch_id, with_curl=kind == "curl")
                 for kind in ("python", "python", "curl", "curl")]
    for follower in followers:
        follower.start()
        assert follower.started.wait(30), "stream did not start"
        assert follower.error is None, follower.error

    # And the chunks go up through nginx, the first one of the full 64 MB
    uploader.upload()
    assert uploader.offset == len(data)
    patch = f"PATCH {urlparse(uploader.url).path} "
    logged = once_logged(lambda: nginx_log(proxied), lambda text: text.count(patch) >= 2)
    patches = [line for line in logged.splitlines() if patch in line]
    assert len(patches) == 2 and all('" 204 ' in line for line in patches), patches
    assert int(patches[0].split("request_length=")[1].split()[0]) > chunk, patches

    # And once the sheets are being read, one web process is killed (SIGKILL)
    deadline = time.monotonic() + 120
    while not any(e["stage"] == "processing_sheets" and e["sheets_processed"] > 0
                  for f in followers for e in f.events):
        assert time.monotonic() < deadline, f"no reading seen\n{proxied.logs()}"
        assert all(f.error is None for f in followers), [f.error for f in followers]
        time.sleep(0.02)
    killed_port = proxied.web_ports[0]
    proxied.kill_web(killed_port)
    killed_at = time.time()
    for follower in followers:
        follower.join(180)
        assert follower.error is None, follower.error
        assert not follower.is_alive()
    stream = f"GET /api/batches/{batch_id}/stream "
    logged = once_logged(lambda: nginx_log(proxied), lambda text: text.count(stream) >= 6)

    # Then the batch completed with every sheet read
    _headers, published, _comments = proxied.stream(batch_id)  # every event, replayed
    assert published[-1]["stage"] == "completed", published[-1]
    assert published[-1]["sheets_processed"] == 40 and published[-1]["sheets_failed"] == 0
    ids = [e["id"] for e in published]

    # And the clients on the killed process were cut, reconnected through
    # nginx with the last id they had, and every client got every event,
    # once, in order
    cut = [f for f in followers if f.cuts]
    assert {f.with_curl for f in cut} == {False, True}, [(f.with_curl, f.cuts) for f in followers]
    for follower in followers:
        assert [e["id"] for e in follower.events] == ids, (follower.with_curl, follower.cuts)
        assert follower.events == published
    for follower in cut:
        assert len(follower.cuts) == 1 and len(follower.connects) == 2
        assert follower.last_event_ids_sent[1] == follower.events[follower.had_at_cut[0] - 1]["id"]
        # and after the reconnect it still got events live, as they were published
        live_after = [e for e, t in zip(follower.events, follower.received_at, strict=True)
                      if t > follower.connects[1] and _published_at(e) > follower.connects[1] - 0.5]
        assert live_after, "no live event after the reconnect"
    # (nginx's log: two streams were on the killed process, and both came
    # back with their Last-Event-ID to the one that lives)
    killed, living = (f"127.0.0.1:{port}" for port in proxied.web_ports)
    lines = [line for line in logged.splitlines() if stream in line]
    first = [line for line in lines if 'last_event_id="-"' in line]
    again = [line for line in lines if 'last_event_id="-"' not in line]
    assert len(first) == 4 and sum(answered_by(line) == killed for line in first) == 2, lines
    assert len(again) == 2 and all(answered_by(line) == living for line in again), lines
    reconnect = [round(f.connects[1] - f.cuts[0], 3) for f in cut]
    before_kill = [sum(1 for t in f.received_at if t <= killed_at) for f in followers]
    print(f"published {len(published)} events; per client received {[len(f.events) for f in followers]} "
          f"({before_kill} before the kill); cut clients: {len(cut)} "
          f"({['curl' if f.with_curl else 'python' for f in cut]}), reconnect took {reconnect} s")
    proxied.start_daphne(killed_port)
    proxied.wait_listening(killed_port)


def _published_at(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- the browser page


# ---------------------------------------------------------------- the timers' jobs


def unit_setting(unit: Path, name: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(f"{name}=")]
    assert len(values) == 1, (unit, name, values)
    return values[0]


def test_the_cleanup_timer_starts_a_job_that_runs(proxied):
    systemd = proxied.rendered / "systemd"
    assert unit_setting(systemd / "omr-cleanup.service", "Type") == "oneshot"
    assert unit_setting(systemd / "omr-cleanup.timer", "Persistent")
    # Lost work needs no timer: the workers look for it themselves (docs/reliability.md)
    assert not (systemd / "omr-reconcile.timer").exists()
    # The job's command, in its folder, with the install's environment
    unit = systemd / "omr-cleanup.service"
    assert unit_setting(unit, "EnvironmentFile") == str(proxied.tmp / "omr.env")
    result = subprocess.run(exec_start(unit), cwd=unit_setting(unit, "WorkingDirectory"), env=proxied.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "orphaned folders" in result.stdout, result.stdout


# ---------------------------------------------------------------- check --deploy


def test_check_deploy_is_clean_with_the_documented_settings(tmp_path):
    from .test_settings import run_manage

    env = render.read_env_file(DEPLOY / "omr.env.example")
    assert env["SECRET_KEY"] == ""  # the example leaves it to be made; docs/deploy.md says how
    env["SECRET_KEY"] = subprocess.run(["python3", "-c", "import secrets; print(secrets.token_urlsafe(50))"],
                                       capture_output=True, text=True, check=True).stdout.strip()
    env.update({"OMR_VAR_DIR": str(tmp_path), "MEDIA_ROOT": str(tmp_path / "media"),
                "STATIC_ROOT": str(tmp_path / "static")})
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# ---------------------------------------------------------------- the browser page


def test_the_batch_page_reconnects_through_nginx_when_its_web_process_is_killed(proxied, browser):
    import playwright.sync_api as playwright_api

    from .test_browser import SEEN_SCRIPT

    expect = playwright_api.expect
    # Given a staff user on the site through nginx (the certificate is the test's own)
    context = browser.new_context(ignore_https_errors=True, base_url=proxied.base_url)
    page = context.new_page()
    page.add_init_script(SEEN_SCRIPT)
    streams: list[dict] = []
    page.on("request", lambda r: streams.append(r.headers) if "progress-stream" in r.url else None)
    page.goto("/batches/")
    page.get_by_label("Username").fill("deploy")
    page.get_by_label("Password").fill("deploy-test-pw-1")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Batches")).to_be_visible()

    # And a batch of 300 pages being read, whose page they follow while its
    # stream is on the second web process (the first is down when the page
    # connects, and started again at once)
    first, second = proxied.web_ports
    sheets = [simulated_sheet(i) for i in range(20)]
    links = proxied.upload(make_zip([(f"copy{k}/{s.name}", s.jpeg) for k in range(15) for s in sheets]))
    proxied.kill_web(first)
    page.goto(f"/batches/{links['batch_id']}/")
    deadline = time.monotonic() + 30
    while not streams and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    proxied.start_daphne(first)
    proxied.wait_listening(first)
    expect(page.locator("#stage-heading")).to_contain_text("Processing", timeout=60_000)
    assert len(streams) == 1

    # When that web process is killed (SIGKILL) mid-stream
    proxied.kill_web(second)
    cut_at = time.monotonic()
    states_before = len(page.evaluate("window.__seen"))
    deadline = time.monotonic() + 30
    while len(streams) == 1 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    reconnected_after = time.monotonic() - cut_at

    # Then the page reconnected through nginx to the process that lives, and
    # followed the batch to its end without a reload
    assert len(streams) == 2, streams
    heading = page.locator("#stage-heading")
    expect(heading).to_contain_text("Completed", timeout=180_000)
    expect(page.get_by_role("progressbar", name="Overall progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#sheets-count")).to_contain_text("300 / 300")
    expect(page.locator("ol.stages li.done")).to_have_count(10)
    seen = page.evaluate("window.__seen")
    assert seen is not None, "the page reloaded"
    assert any(text.startswith("Processing") for text in seen) and seen[-1].startswith("Completed"), seen
    assert len(seen) > states_before
    # (nginx's log: the first stream was on the killed process; the page's
    # next ones went to the other, none to the dead one)
    path = f"/batches/{links['batch_id']}/progress-stream"
    logged = once_logged(lambda: nginx_log(proxied), lambda text: sum(
        path in line and " 200 " in line for line in text.splitlines()) >= 2)
    lines = [line for line in logged.splitlines() if path in line]
    assert " 200 " in lines[0] and answered_by(lines[0]) == f"127.0.0.1:{second}", lines
    assert " 200 " in lines[-1] and answered_by(lines[-1]) == f"127.0.0.1:{first}", lines
    assert all(answered_by(line) in (f"127.0.0.1:{first}", "omr_web") for line in lines[1:]), lines
    print(f"page stream: {len(lines)} stream requests through nginx ({sum(' 502 ' in x for x in lines)} "
          f"answered 502), the second {reconnected_after:.1f} s after the kill, "
          f"with {lines[1].split()[-1]}; states seen {states_before} before the kill, "
          f"{len(seen)} in all; completed {time.monotonic() - cut_at:.1f} s after the kill")
    context.close()
    proxied.start_daphne(second)
    proxied.wait_listening(second)
