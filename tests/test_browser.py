"""End to end in a real browser: Chromium (driven by Playwright) against a real
Daphne server, a real Dramatiq worker process and a real Redis, all started
here on free ports with their own database and media folder.

A staff user logs in, uploads a ZIP of simulated sheets on the upload page,
watches the batch page follow the SSE stream to 100 % and "Completed" without
a reload, and downloads the CSV, which holds what was filled in.

Needs /usr/bin/chromium (``bin/setup --browser``), the ``playwright`` package
and a Redis (REDIS_URL, default 127.0.0.1:6379); the servers are the ones the
end-to-end test starts (``tests/test_end_to_end.Servers``: a Redis database
number and key namespace of their own, SQLite or a fresh PostgreSQL database).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest

from .conftest import CHROMIUM, sheets_zip

pytestmark = pytest.mark.slow

STAFF_USER, STAFF_PASSWORD = "reviewer", "browser-test-pw-1"
SHEETS = 6

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} missing (bin/setup --browser installs it)", pytrace=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Daphne + a rundramatiq worker + Redis, started the way the end-to-end
    test starts them (its ``Servers``), with a staff login for the browser and
    one sheet per message so the page has a run to follow; yields the base URL."""
    from .test_end_to_end import running_servers

    with running_servers(tmp_path_factory.mktemp("browser"), OMR_CHUNK_SIZE="1", OMR_STAFF_USER=STAFF_USER,
                         OMR_STAFF_PASSWORD=STAFF_PASSWORD) as servers:
        yield f"http://127.0.0.1:{servers.port}"


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
