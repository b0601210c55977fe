"""End to end in a real browser: Chromium (driven by Playwright) against a real
Daphne server, a real Dramatiq worker process and a real Redis, all started
here on free ports with their own database and media folder.

A staff user logs in, uploads a ZIP of simulated sheets on the upload page,
watches the batch page follow the SSE stream to 100 % and "Completed" without
a reload, and downloads the CSV, which holds what was filled in.

Needs /usr/bin/chromium (``bin/setup --browser``), the ``playwright`` package
and a Redis (REDIS_URL, default 127.0.0.1:6379; a separate database number is
used and emptied, or a private redis-server is started when none answers).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import sheets_zip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("OMR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REDIS_DB = int(os.environ.get("OMR_BROWSER_REDIS_DB", "13"))
STAFF_USER, STAFF_PASSWORD = "reviewer", "browser-test-pw-1"
SHEETS = 6

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} missing (bin/setup --browser installs it)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_for_http(url: str, procs: list[subprocess.Popen], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:3]} exited with {p.returncode} before the server answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started here, with the children it forked (its own
    process group, created at start), politely first."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_stack(work: Path, **overrides: str):
    """Redis + Dramatiq worker + Daphne, as ``bin/serve`` runs them, with their
    own database and media under ``work``; yields the base URL. ``overrides``
    are extra environment variables for the servers."""
    import redis

    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, args: list[str], env: dict) -> subprocess.Popen:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc

    base_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(base_redis):
        redis_url = base_redis.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    elif shutil.which("redis-server"):
        port = free_port()
        start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                        "no"], os.environ.copy())
        redis_url = f"redis://127.0.0.1:{port}/{REDIS_DB}"
        for _ in range(50):
            if redis_answers(redis_url):
                break
            time.sleep(0.1)
    else:
        pytest.skip("no Redis answers and redis-server is not installed")
    redis.Redis.from_url(redis_url).flushdb()

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_"))},
        "DJANGO_SETTINGS_MODULE": "omrsite.settings",
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "REDIS_URL": redis_url,
        "OMR_BROKER": "redis",
        "OMR_CHANNEL_LAYER": "redis",
        "MEDIA_ROOT": str(work / "media"),
        "OMR_VAR_DIR": str(work / "var"),
        "SECRET_KEY": "browser-test-secret-key-not-for-production-0123456789",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DEBUG": "0",
        # Small messages and frequent events, so the page has a run to follow.
        "OMR_CHUNK_SIZE": "1",
        "OMR_PROGRESS_INTERVAL": "0.3",
        "OMR_STAFF_USER": STAFF_USER,
        "OMR_STAFF_PASSWORD": STAFF_PASSWORD,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }
    python = sys.executable
    try:
        for command in (["migrate", "--noinput"], ["ensure_staff_user"]):
            subprocess.run([python, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
        start("worker", [python, "manage.py", "rundramatiq", "--processes", "1", "--threads", "2"], env)
        web = start("daphne", [str(Path(python).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                               "omrsite.asgi:application"], env)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/accounts/login/", [web])
        yield base
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("browser-stack")
    try:
        with running_stack(work) as base:
            yield base
    finally:
        # Shown by pytest only when a test failed.
        print(*(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in work.glob("*.log")), sep="\n")


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


SEEN_SCRIPT = """
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("progress");
  if (!box) return;
  window.__seen = [];
  const note = () => {
    const h = document.getElementById("stage-heading");
    const bar = box.querySelector('[role="progressbar"]');
    const text = h ? h.textContent.trim().replace(/\\s+/g, " ") + " " + bar.getAttribute("aria-valuenow") : "";
    if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
  };
  note();
  new MutationObserver(note).observe(box, {childList: true, subtree: true});
});
"""


def test_upload_follow_live_and_download(stack, browser, tmp_path):
    expect = playwright_api.expect
    data, sheets = sheets_zip(SHEETS)
    scans = tmp_path / "exam-scans.zip"
    scans.write_bytes(data)

    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    # Every state the batch page shows, recorded as the stream swaps it in; a
    # reload would start a new, shorter list.
    page.add_init_script(SEEN_SCRIPT)
    stream_requests = []
    page.on("request", lambda r: stream_requests.append(r.url) if "progress-stream" in r.url else None)

    # Given a staff user who logs in
    page.goto(f"{stack}/batches/")
    expect(page).to_have_url(f"{stack}/accounts/login/?next=/batches/")
    page.get_by_label("Username").fill(STAFF_USER)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Batches")).to_be_visible()

    # When they upload a ZIP of simulated sheets on the upload page
    page.get_by_role("link", name="Upload scans").first.click()
    page.get_by_label("Scanned sheets").set_input_files(str(scans))
    page.get_by_label("Sheet template").select_option("a4-20q-4")
    page.get_by_label("Yes: sort pages by their QR code").check()
    page.get_by_role("button", name="Upload and read").click()

    # Then they land on the batch page, which follows the run without a reload
    page.wait_for_url(f"{stack}/batches/*/", timeout=30_000)
    heading = page.locator("#stage-heading")
    expect(heading).to_contain_text("Completed", timeout=120_000)
    bar = page.get_by_role("progressbar", name="Overall progress")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    assert page.locator(".percent").inner_text().strip() == "100 %"
    seen = page.evaluate("window.__seen")
    assert seen is not None, "the page reloaded"
    assert len(seen) >= 2 and seen[-1].startswith("Completed"), seen
    expect(page.locator("#sheets-count")).to_contain_text(f"{SHEETS}")
    expect(page.locator("ol.stages li.done")).to_have_count(10)

    # And the page stops listening after "done" (no reconnect loop replaying the log)
    page.wait_for_timeout(2500)
    assert len(stream_requests) == 1, stream_requests

    # And the CSV they download holds every sheet as filled in
    with page.expect_download() as info:
        page.get_by_role("link", name="Download results.csv").click()
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_bytes().decode("utf-8-sig"))))
    assert [r["source_file"] for r in rows] == [s.name for s in sheets]
    for row, sheet in zip(rows, sheets, strict=True):
        assert row["student"] == sheet.student
        for field, value in sheet.answers.items():
            assert row[field] == value, (sheet.name, field)

    # And the batch list shows it finished
    page.get_by_role("link", name="Batches").first.click()
    expect(page.locator("tbody tr").first).to_contain_text("Completed")
    expect(page.locator("tbody tr").first).to_contain_text("exam-scans.zip")
    page.close()
