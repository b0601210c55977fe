"""The batch page's stream in a real browser when the server ends it before
the batch finishes (``OMR_STREAM_MAX_SECONDS``): Chromium's EventSource, under
htmx-ext-sse, reconnects by itself with ``Last-Event-ID`` and the page follows
the batch to "Completed" without a reload, a replay or a stop.

Needs what ``tests/test_browser.py`` needs (Chromium, Redis)."""

from __future__ import annotations

from pathlib import Path

import playwright.sync_api as playwright_api
import pytest

from .conftest import CHROMIUM, sheets_zip
from .test_browser import SEEN_SCRIPT

pytestmark = pytest.mark.slow

STAFF_USER, STAFF_PASSWORD = "streamer", "browser-stream-pw-1"
SHEETS = 30

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} missing (bin/setup --browser installs it)", pytrace=False)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Daphne, a worker and Redis, with streams that live about half a second,
    and one sheet per message, so that even on a quiet machine the batch
    outlives several streams."""
    from .test_end_to_end import running_servers

    with running_servers(tmp_path_factory.mktemp("browser-stream"), STAFF_USER, OMR_CHUNK_SIZE="1",
                         OMR_STREAM_MAX_SECONDS="0.6", OMR_STAFF_PASSWORD=STAFF_PASSWORD) as s:
        yield s


def test_the_batch_page_resumes_its_stream_after_the_server_ends_it(servers, browser):
    expect = playwright_api.expect
    base = f"http://127.0.0.1:{servers.port}"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(SEEN_SCRIPT)
    stream_requests = []
    page.on("request", lambda r: stream_requests.append(r) if "progress-stream" in r.url else None)

    # Given a staff user logged in, and a batch uploaded that takes several
    # stream lifetimes to read
    page.goto(f"{base}/accounts/login/?next=/batches/")
    page.get_by_label("Username").fill(STAFF_USER)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Batches")).to_be_visible()
    data, _sheets = sheets_zip(SHEETS)
    batch_id = servers.upload(data)["batch_id"]

    # When they watch its page
    page.goto(f"{base}/batches/{batch_id}/")

    # Then the page follows it to "Completed" without a reload
    expect(page.locator("#stage-heading")).to_contain_text("Completed", timeout=120_000)
    seen = page.evaluate("window.__seen")
    assert seen is not None and seen[-1].startswith("Completed"), seen
    page.wait_for_timeout(2500)

    # And the server ended the stream on it more than once, and each time the
    # browser came back with the Last-Event-ID of the last state it had
    assert len(stream_requests) >= 2, [r.url for r in stream_requests]
    resumed = [r.all_headers().get("last-event-id") for r in stream_requests[1:]]
    assert all(value and value.isdigit() for value in resumed), resumed
    assert [int(v) for v in resumed] == sorted(int(v) for v in resumed)
    # And the progress bar never went backwards (no replay of the log)
    percents = [float(s.rsplit(" ", 1)[1]) for s in seen if s]
    assert percents == sorted(percents), seen
    # And after "done" it stopped listening
    count = len(stream_requests)
    page.wait_for_timeout(2500)
    assert len(stream_requests) == count
    page.close()
