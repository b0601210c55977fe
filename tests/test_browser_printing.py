"""A roster printed from the browser and read back: Chromium (Playwright)
against a real Daphne, a real Dramatiq worker and Redis (the servers of
``tests/test_end_to_end``).

A staff user logs in, makes an exam with two versions' keys and imports a
roster of six (the API, with the browser's session), prints the roster PDF
from the exam's print page (built by the worker, since this server builds
prints of over four pages in the background, then downloaded from the page),
and the PDF's pages are rendered, filled in by the engine's simulator with
known answers as a mild scanner delivers them, zipped and uploaded for the
exam; once the batch is read, every student's score is the score their
answers earn under the key and the rules, worked out here by hand.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import zipfile
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest

from .conftest import CHROMIUM

pytestmark = pytest.mark.slow

STAFF_USER, STAFF_PASSWORD = "teacher", "print-test-pw-1"
TEMPLATE = "a4-20q-4"
QUESTIONS = [f"q{i}" for i in range(1, 21)]
KEYS = {"A": dict(zip(QUESTIONS, "ABCDABCDABCDABCDABCD", strict=True)),
        "B": dict(zip(QUESTIONS, "DCBADCBADCBADCBADCBA", strict=True))}
POINTS = {"q1": 2, "q2": 0.5}
WRONG, BLANK, MULTIPLE = -0.25, 0, -0.5
ROSTER = [("7001", "Ada Lovelace", "M1"), ("7002", "Alan Turing", "M2"), ("7003", "Grace Hopper", "M1"),
          ("7004", "Edsger Dijkstra", "M2"), ("7005", "Barbara Liskov", "M1"), ("7006", "Donald Knuth", "M2")]

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} missing (bin/setup --browser installs it)", pytrace=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from .test_end_to_end import running_servers

    with running_servers(tmp_path_factory.mktemp("printing"), OMR_STAFF_USER=STAFF_USER,
                         OMR_STAFF_PASSWORD=STAFF_PASSWORD, OMR_PRINT_IN_REQUEST_PAGES="4") as servers:
        yield f"http://127.0.0.1:{servers.port}"


def expected_score(answers: dict, key: dict) -> float:
    """The rules written out: the key's answer earns the question's points; a
    blank ``BLANK``, several marks ``MULTIPLE``, any other answer ``WRONG``."""
    total = 0.0
    for q, right in key.items():
        given = answers.get(q, "")
        if given == right:
            total += POINTS.get(q, 1)
        elif given == "":
            total += BLANK
        elif len(given) > 1:
            total += MULTIPLE
        else:
            total += WRONG
    return total


def fill_in(pdf: bytes) -> tuple[bytes, dict[str, tuple[str, float]]]:
    """Each page of the printed PDF filled in (known answers, version A or B
    by turns) and scanned by the simulator; the ZIP of scans, and each
    student's version and expected score by the QR code read from the page."""
    import pypdfium2 as pdfium

    from batches.omr.layout import page_layout
    from batches.omr.reader import read_sheet
    from batches.omr.render import render_pdf_page_image
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(TEMPLATE)
    doc = pdfium.PdfDocument(pdf)
    pages = len(doc)
    doc.close()
    expected, buf = {}, io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(pages):
            def printed(dpi, index=i):
                layout = page_layout(t, 1, dpi)
                return render_pdf_page_image(pdf, index, dpi, layout.width, layout.height), layout

            grey, _layout = printed(150)
            student = read_sheet(grey, t).qr.student
            version = "AB"[i % 2]
            answers = simulate.random_answers(t, 1, random.Random(500 + i), student=student, exam=version,
                                              blank_rate=0.1, multiple_rate=0.1)
            sim = simulate.simulate_sheet(t, answers, seed=500 + i, preset="scan_mild", printed=printed)
            zf.writestr(f"scan_{i + 1:02d}.jpg", sim.encode_jpeg())
            expected[student] = (version, expected_score(sim.truth["answers"], KEYS[version]))
    return buf.getvalue(), expected


def api(page, method: str, path: str, **kw):
    """The JSON API with the browser's own session (CSRF token from its cookie)."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.fetch(path, method=method, headers={"X-CSRFToken": token, **kw.pop("headers", {})}, **kw)
    assert response.ok, (path, response.status, response.text())
    return response


def test_print_the_roster_fill_it_in_upload_and_every_score_is_right(stack, browser, tmp_path):
    expect = playwright_api.expect
    page = browser.new_page(viewport={"width": 1200, "height": 1000}, accept_downloads=True, base_url=stack)

    # Given a staff user who logs in
    page.goto("/batches/")
    page.get_by_label("Username").fill(STAFF_USER)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Batches")).to_be_visible()

    # And an exam with two versions' keys and a roster of six
    exam = api(page, "POST", "/api/exams", headers={"Content-Type": "application/json"}, data=json.dumps(
        {"name": "Computing 101", "template": TEMPLATE, "keys": KEYS, "points": POINTS, "wrong": WRONG,
         "blank": BLANK, "multiple": MULTIPLE})).json()
    exam_id = exam["exam_id"]
    roster_csv = "student_number,name,group\n" + "".join(f"{n},{name},{g}\n" for n, name, g in ROSTER)
    imported = api(page, "POST", f"/api/exams/{exam_id}/roster", headers={"Content-Type": "text/csv"},
                   data=roster_csv).json()
    assert imported["roster"] == 6

    # When they print the roster, as imported, from the exam's print page
    page.goto(f"/exams/{exam_id}/print")
    section = page.locator("#print-section")
    expect(section).to_contain_text("(6 students)")
    page.get_by_label("A sheet for every student on the roster").check()
    page.get_by_label("As imported").check()
    page.get_by_label("Blank sheets for walk-ins").fill("0")
    page.get_by_role("button", name="Print PDF").click()

    # Then the page shows the worker building it, then offers the download
    download_link = page.get_by_role("link", name="Download computing-101-roster.pdf")
    expect(download_link).to_be_visible(timeout=60_000)
    expect(section.locator(".print-job .badge")).to_have_text("Ready")
    expect(section.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    # OMR_SCREENSHOT_DIR keeps a picture of the section for the docs
    if os.environ.get("OMR_SCREENSHOT_DIR"):
        section.screenshot(path=str(Path(os.environ["OMR_SCREENSHOT_DIR"]) / "print-section.png"))
    with page.expect_download() as info:
        download_link.click()
    pdf = Path(info.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF")

    # And the sheets, filled in and scanned, go up for the exam
    scans, expected = fill_in(pdf)
    assert sorted(expected) == [n for n, _name, _g in ROSTER]
    upload = api(page, "POST", "/api/batches/upload", multipart={
        "file": {"name": "computing-101.zip", "mimeType": "application/zip", "buffer": scans},
        "exam": str(exam_id), "has_qr": "true", "template": TEMPLATE}).json()
    page.goto(f"/batches/{upload['batch_id']}/")
    expect(page.locator("#stage-heading")).to_contain_text("Completed", timeout=180_000)

    # Then every student is on the roster and scored as their answers earn
    rows = list(csv.DictReader(io.StringIO(
        api(page, "GET", f"/api/exams/{exam_id}/results.csv").body().decode("utf-8-sig"))))
    assert sorted(r["student"] for r in rows) == sorted(expected)
    for row in rows:
        version, score = expected[row["student"]]
        assert row["version"] == version, row
        assert float(row["score"]) == pytest.approx(score), (row["student"], row)
        assert float(row["max_score"]) == 18 + 2 + 0.5
    report = api(page, "GET", f"/api/exams/{exam_id}/report").json()
    assert report["unknown_students"] == [] and report["absent"] == [] and report["duplicates"] == []
