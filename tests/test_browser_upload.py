"""Resumable uploads in a real browser: the upload page sends the file through
tus (static/js/upload.js and the vendored tus-js-client) to a real Daphne,
with a real Dramatiq worker and Redis behind it (``tests.test_end_to_end.Servers``).

- Daphne is stopped (SIGKILL, and SIGTERM) in the middle of an upload and
  started again on the same port: the page retries by itself, the upload goes on from the server's
  offset (no reload, no second upload), the stored file is the source byte for
  byte, the batch page shows Completed and the CSV downloads; the batch's event
  stream carries the upload's progress as the ``uploading`` stage.
- Pause stops the upload (the server's offset, asked with HEAD, stays put) and
  Resume finishes it.
- A reload in the middle: the page lists the unfinished upload, offers to
  resume it when the same file is chosen again, and resuming sends only the rest.

The page's chunks are 256 KB (``OMR_TUS_BROWSER_CHUNK_MB``) and Chromium's
upload is throttled to 150 KB/s (DevTools ``Network.emulateNetworkConditions``),
so the 3 MB ZIP of simulated sheets takes about twenty seconds in a dozen PATCHes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import playwright.sync_api as playwright_api
import pytest

from .conftest import sheets_zip

pytestmark = pytest.mark.slow

STAFF_USER, STAFF_PASSWORD = "uploader", "browser-upload-pw-1"
CHUNK = 256 * 1024
UPLOAD_BYTES_PER_S = 150 * 1024
expect = playwright_api.expect


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Daphne + a rundramatiq worker + Redis as the browser test starts them,
    with small browser chunks; yields the ``Servers`` (an API token of the same
    user in ``servers.token``, for HEAD requests and the event stream)."""
    from .test_end_to_end import running_servers

    with running_servers(tmp_path_factory.mktemp("browser-upload"), OMR_CHUNK_SIZE="1", OMR_STAFF_USER=STAFF_USER,
                         OMR_STAFF_PASSWORD=STAFF_PASSWORD,
                         OMR_TUS_BROWSER_CHUNK_MB=str(CHUNK / 1024 / 1024)) as servers:
        servers.token = servers.manage("create_api_token", STAFF_USER).strip()
        servers.base = f"http://127.0.0.1:{servers.port}"
        yield servers


@pytest.fixture(scope="module")
def scans():
    data, sheets = sheets_zip(6)
    assert len(data) > 8 * CHUNK  # enough chunks to be cut off in the middle
    return data, sheets


# ---------------------------------------------------------------- helpers


def wait_until(condition, timeout: float, what: str, page=None):
    """Poll ``condition`` until it gives something true; returns it. With a
    ``page``, wait through Playwright, which delivers the page's events
    (requests) only while it is called."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if page is not None:
            page.wait_for_timeout(200)
        else:
            time.sleep(0.2)
    raise AssertionError(f"still waiting after {timeout} s: {what}")


def open_upload_page(stack, browser, patches: list):
    """A logged-in staff page on the upload form, its upload throttled; every
    PATCH it sends is noted in ``patches`` as its Upload-Offset."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.on("request", lambda r: patches.append(int(r.headers["upload-offset"]))
            if r.method == "PATCH" and "/api/uploads/" in r.url else None)
    page.goto(f"{stack.base}/accounts/login/?next=/batches/upload")
    page.get_by_label("Username").fill(STAFF_USER)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Upload scans")).to_be_visible()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 20, "downloadThroughput": -1,
                                                   "uploadThroughput": UPLOAD_BYTES_PER_S})
    return page


def choose_and_upload(page, path: Path) -> None:
    page.get_by_label("Scanned sheets").set_input_files(str(path))
    page.get_by_label("Sheet template").select_option("a4-20q-4")
    page.get_by_label("Yes: sort pages by their QR code").check()
    page.get_by_role("button", name="Upload and read").click()


def stored_uploads(page) -> list[dict]:
    """What tus-js-client keeps in localStorage to resume the page's uploads."""
    return page.evaluate("""() => Object.keys(localStorage).filter(k => k.startsWith("tus::omr-"))
                                    .map(k => JSON.parse(localStorage.getItem(k)))""")


def head(stack, upload_url: str) -> tuple[int, int, str]:
    """The server's offset, length and batch id of an upload (tus HEAD)."""
    status, headers, _body = stack.request("HEAD", urlparse(upload_url).path, headers={"Tus-Resumable": "1.0.0"})
    assert status == 200, (status, headers)
    return int(headers["Upload-Offset"]), int(headers["Upload-Length"]), headers["Upload-Batch-Id"]


def metadata_of(stack, upload_url: str) -> dict[str, str]:
    """The upload's Upload-Metadata as the server keeps it, decoded."""
    _status, headers, _body = stack.request("HEAD", urlparse(upload_url).path, headers={"Tus-Resumable": "1.0.0"})
    pairs = (item.split(" ") for item in headers["Upload-Metadata"].split(","))
    return {p[0]: base64.b64decode(p[1]).decode() if len(p) > 1 else "" for p in pairs}


def upload_url_of(page) -> str:
    return wait_until(lambda: [u["uploadUrl"] for u in stored_uploads(page)], 60, "the upload to be created")[0]


def wait_for_offset(stack, upload_url: str, at_least: int) -> tuple[int, int, str]:
    return wait_until(lambda: (lambda h: h if h[0] >= at_least else None)(head(stack, upload_url)), 120,
                      f"the server to hold {at_least} bytes")


def settled_offset(stack, page, upload_url: str) -> int:
    """The server's offset once it stops moving: a chunk whose body was all in
    when the page stopped sending may still be stored. At the throttled speed
    a chunk takes under 2 s, so a running upload moves within 2 s."""
    def same_twice():
        first = head(stack, upload_url)[0]
        page.wait_for_timeout(2000)
        return (first,) if head(stack, upload_url)[0] == first else None

    return wait_until(same_twice, 60, "the offset to stop moving")[0]


def api_json(stack, path: str) -> dict:
    status, _headers, raw = stack.request("GET", path)
    assert status == 200, raw
    return json.loads(raw)


def batch_count(stack) -> int:
    return len(api_json(stack, "/api/batches?limit=200")["batches"])


def stored_file_sha256(stack, batch_id: str) -> str:
    files = list((stack.tmp / "media" / "batches" / batch_id).glob("**/original.*"))
    assert len(files) == 1, files
    return hashlib.sha256(files[0].read_bytes()).hexdigest()


def check_completed_with_csv(page, sheets) -> None:
    expect(page.locator("#stage-heading")).to_contain_text("Completed", timeout=120_000)
    expect(page.locator("#sheets-count")).to_contain_text(str(len(sheets)))
    with page.expect_download() as info:
        page.get_by_role("link", name="Download results.csv").click()
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_bytes().decode("utf-8-sig"))))
    assert [r["source_file"] for r in rows] == [s.name for s in sheets]
    for row, sheet in zip(rows, sheets, strict=True):
        assert row["student"] == sheet.student
        assert {f: row[f] for f in sheet.answers} == sheet.answers, sheet.name


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_upload_resumes_by_itself_after_the_server_is_stopped_and_started_again(stack, browser, scans, tmp_path,
                                                                                stop_signal):
    data, sheets = scans
    source = tmp_path / "cut-off-scans.zip"
    source.write_bytes(data)
    before = batch_count(stack)
    patches: list[int] = []
    page = open_upload_page(stack, browser, patches)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    # Given an upload under way: the server holds its first chunk, not all of it
    choose_and_upload(page, source)
    upload_url = upload_url_of(page)
    offset, length, batch_id = wait_for_offset(stack, upload_url, CHUNK)
    assert offset < length == len(data)
    # (with what the page declared: the form's choices and the file's SHA-256, which the server checks at the end)
    source_sha = hashlib.sha256(data).hexdigest()
    assert metadata_of(stack, upload_url) == {"filename": "cut-off-scans.zip", "filetype": "application/zip",
                                              "template": "a4-20q-4", "has_qr": "true", "sha256": source_sha}

    # When Daphne is stopped (killed, or told to stop), stays away while the
    # page's retries fail, and starts again on the same port
    stack.stop_web(stop_signal)
    status = page.locator("#upload-status")
    expect(status).to_contain_text("The connection to the server was lost", timeout=60_000)
    expect(status).to_contain_text("Trying again")
    page.wait_for_timeout(3000)
    sent_while_away = len(patches)
    stack.start_web()

    # Then the page carries on by itself from what the server holds: the
    # same upload, PATCHes from the stored offset on (never from zero again)
    resumed = wait_until(lambda: patches[sent_while_away:], 120, "a PATCH after the restart", page)
    assert resumed[0] >= offset, (offset, patches)
    page.wait_for_url(f"{stack.base}/batches/{batch_id}/", timeout=180_000)
    assert all(p >= offset for p in patches[sent_while_away:]), patches
    assert sorted(set(patches)) == list(range(0, length, CHUNK)), patches  # every chunk, in order
    # ... without a reload: from the upload page straight to the batch page
    assert navigations == [f"{stack.base}/batches/{batch_id}/"], navigations

    # And the server stored the very file that was chosen, in one batch
    assert stored_file_sha256(stack, batch_id) == source_sha
    batch = api_json(stack, f"/api/batches/{batch_id}")
    assert batch["sha256"] == source_sha and batch["size"] == len(data)
    assert batch_count(stack) == before + 1
    assert stored_uploads(page) == []  # forgotten once finished

    # And the batch page shows it completed, and the CSV holds what was filled in
    check_completed_with_csv(page, sheets)

    # And the upload's progress came as the first stage of the batch's own event stream
    _headers, events, _comments = stack.stream(batch_id)
    stages = [e["stage"] for e in events]
    uploading = [e for e in events if e["stage"] == "uploading"]
    assert stages[: len(uploading)] == ["uploading"] * len(uploading) and stages[-1] == "completed"
    middle = [e["progress_percentage"] for e in uploading if 0 < e["progress_percentage"] < 100]
    assert len(middle) >= 2 and middle == sorted(middle), uploading
    assert uploading[-1]["progress_percentage"] == 100
    page.close()


def test_pause_stops_the_upload_and_resume_finishes_it(stack, browser, scans, tmp_path):
    data, sheets = scans
    source = tmp_path / "paused-scans.zip"
    source.write_bytes(data)
    patches: list[int] = []
    page = open_upload_page(stack, browser, patches)

    # Given an upload under way
    choose_and_upload(page, source)
    upload_url = upload_url_of(page)
    _offset, length, batch_id = wait_for_offset(stack, upload_url, CHUNK)

    # When Pause is pressed
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#upload-status")).to_contain_text("Paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()

    # Then the server's offset settles and stays there
    paused_at = settled_offset(stack, page, upload_url)
    sent = len(patches)
    page.wait_for_timeout(4000)
    assert head(stack, upload_url)[0] == paused_at < length
    assert len(patches) == sent  # no PATCH while paused
    expect(page.locator("#upload-figures")).to_contain_text("are on the server")

    # When Resume is pressed, the rest goes from the server's offset and the batch completes
    page.get_by_role("button", name="Resume").click()
    page.wait_for_url(f"{stack.base}/batches/{batch_id}/", timeout=180_000)
    assert patches[sent] == paused_at, patches
    assert stored_file_sha256(stack, batch_id) == hashlib.sha256(data).hexdigest()
    check_completed_with_csv(page, sheets)
    page.close()


def test_after_a_reload_the_same_file_resumes_where_it_stopped(stack, browser, scans, tmp_path):
    data, sheets = scans
    source = tmp_path / "reloaded-scans.zip"
    source.write_bytes(data)
    before = batch_count(stack)
    patches: list[int] = []
    page = open_upload_page(stack, browser, patches)

    # Given an upload that reached the server in part when the page was reloaded
    choose_and_upload(page, source)
    upload_url = upload_url_of(page)
    wait_for_offset(stack, upload_url, 2 * CHUNK)
    page.reload()
    expect(page.get_by_role("heading", name="Upload scans")).to_be_visible()
    offset = settled_offset(stack, page, upload_url)
    _offset, length, batch_id = head(stack, upload_url)
    assert 0 < offset < length

    # Then the page says an upload from this browser is unfinished
    unfinished = page.locator("#unfinished-uploads")
    expect(unfinished).to_be_visible()
    expect(unfinished).to_contain_text("reloaded-scans.zip")
    expect(unfinished).to_contain_text("Choose the same file again")

    # When the same file is chosen again, the page offers to resume it
    page.get_by_label("Scanned sheets").set_input_files(str(source))
    offer = page.locator("#resume-offer")
    expect(offer).to_be_visible()
    expect(offer).to_contain_text("partly uploaded")
    expect(offer).to_contain_text(f"({100 * offset // length} %)")
    expect(offer).to_contain_text("a4-20q-4")
    expect(page.locator("#upload-button")).to_have_text("Resume upload")
    # ... and the form shows the choices the upload began with, not the page's defaults
    expect(page.get_by_label("Sheet template")).to_have_value("a4-20q-4")

    # And resuming sends only the rest, into the same upload and batch
    sent = len(patches)
    page.get_by_role("button", name="Resume this upload").click()
    page.wait_for_url(f"{stack.base}/batches/{batch_id}/", timeout=180_000)
    assert patches[sent] == offset, patches
    assert batch_count(stack) == before + 1
    assert stored_file_sha256(stack, batch_id) == hashlib.sha256(data).hexdigest()
    check_completed_with_csv(page, sheets)
    page.close()


def test_without_javascript_the_form_posts_the_file_as_before(stack, browser, scans, tmp_path):
    data, sheets = scans
    source = tmp_path / "plain-post-scans.zip"
    source.write_bytes(data)
    page = browser.new_page(java_script_enabled=False)
    tus_requests = []
    page.on("request", lambda r: tus_requests.append(r.url) if "/api/uploads" in r.url else None)
    page.goto(f"{stack.base}/accounts/login/?next=/batches/upload")
    page.get_by_label("Username").fill(STAFF_USER)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()

    # Given the upload page without JavaScript: no progress box, no resume offer, no buttons but the form's
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    expect(page.locator("#resume-offer")).to_be_hidden()

    # When the form is sent
    page.get_by_label("Scanned sheets").set_input_files(str(source))
    page.get_by_label("Sheet template").select_option("a4-20q-4")
    page.get_by_role("button", name="Upload and read").click()

    # Then it went as one multipart POST, to the batch page, and the batch completes
    page.wait_for_url(f"{stack.base}/batches/*/", timeout=120_000)
    assert tus_requests == []
    batch_id = urlparse(page.url).path.split("/")[2]
    wait_until(lambda: api_json(stack, f"/api/batches/{batch_id}")["stage"] == "completed", 120, "the batch to complete")
    assert stored_file_sha256(stack, batch_id) == hashlib.sha256(data).hexdigest()
    page.reload()
    expect(page.locator("#stage-heading")).to_contain_text("Completed")
    page.close()
