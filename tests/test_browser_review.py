"""The review queue cleared with the keyboard alone, in Chromium (Playwright)
against a real Daphne, worker and Redis (the end-to-end test's servers).

An exam is made through the API and a ZIP of simulated sheets, several with
double marks, is uploaded for it. A reviewer logs in and works through the
queue without touching the mouse: the first field in doubt has the focus,
letters replace the answer, Space blanks it, the arrow keys move between
fields, Enter accepts the sheet and brings the next one. The count left goes
down to zero, the exam's results hold exactly what was typed, and the score
on the page changes as soon as a field is corrected.
"""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest

from .conftest import CHROMIUM, make_zip

pytestmark = pytest.mark.slow

STAFF_USER, STAFF_PASSWORD = "marker", "browser-review-pw-1"
TEMPLATE = "a4-20q-4"
KEY = {f"q{i}": "ABCD"[(i * 7) % 4] for i in range(1, 21)}
#: Each sheet's double marks: {question: what was marked}; the key's letter is one of them.
DOUBLES = [{"q2": "AB", "q9": "CD"}, {"q4": "BD"}, {"q12": "AC", "q17": "BC", "q20": "AD"}]
#: The question the reviewer blanks (Space) instead of typing the key.
BLANKED = "q9"

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} missing (bin/setup --browser installs it)", pytrace=False)


def scans() -> tuple[bytes, list[dict]]:
    """A ZIP of clean simulated sheets answered with the key, but for DOUBLES."""
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(TEMPLATE)
    entries, truths = [], []
    for n, doubles in enumerate(DOUBLES):
        answers = simulate.random_answers(t, 1, random.Random(n), student=f"{2000 + n}", exam="A")
        answers.update(KEY)
        answers.update(doubles)
        sim = simulate.simulate_sheet(t, answers, seed=n, preset="clean", student=f"{2000 + n}")
        entries.append((f"sheet_{n + 1}.jpg", sim.encode_jpeg()))
        truths.append(sim.truth["answers"])
    return make_zip(entries), truths


def multipart(fields: dict, file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 f"Content-Type: application/zip\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from .test_end_to_end import running_servers

    with running_servers(tmp_path_factory.mktemp("review"), username=STAFF_USER,
                         OMR_STAFF_PASSWORD=STAFF_PASSWORD) as servers:
        yield servers


def upload_exam_batch(servers) -> tuple[int, str]:
    status, _h, raw = servers.request("POST", "/api/exams", json.dumps(
        {"name": "Keyboard test", "template": TEMPLATE, "keys": {"A": KEY}}).encode(),
        {"Content-Type": "application/json"})
    assert status == 201, raw
    exam_id = json.loads(raw)["exam_id"]
    data, _truths = scans()
    body, content_type = multipart({"template": TEMPLATE, "has_qr": "true", "exam": exam_id}, "doubles.zip", data)
    status, _h, raw = servers.request("POST", "/api/batches/upload", body, {"Content-Type": content_type})
    assert status == 202, raw
    batch_id = json.loads(raw)["batch_id"]
    _headers, events, _comments = servers.stream(batch_id)
    assert events[-1]["stage"] == "completed", events[-1]
    assert events[-1]["sheets_needs_review"] == len(DOUBLES), events[-1]
    return exam_id, batch_id


def results(servers, exam_id) -> dict[str, dict]:
    status, _h, raw = servers.request("GET", f"/api/exams/{exam_id}/results.csv")
    assert status == 200, raw
    return {r["source_file"]: r for r in csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))}


def test_a_review_queue_cleared_with_the_keyboard_only(stack, browser):
    expect = playwright_api.expect
    exam_id, batch_id = upload_exam_batch(stack)
    before = results(stack, exam_id)

    base = f"http://127.0.0.1:{stack.port}"
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    clicks = []
    page.expose_function("noteClick", lambda detail: clicks.append(detail))
    # A real pointer click has detail >= 1; the keys' own clicks (button.click()) have 0.
    page.add_init_script("document.addEventListener('click', e => { if (e.detail > 0) window.noteClick(e.detail); },"
                         " true)")
    # htmx settles a swapped sheet 20 ms after the swap, later on a busy machine: made long here, so
    # that the keys below would go astray if they were taken before the new sheet is ready.
    page.add_init_script("document.addEventListener('DOMContentLoaded', () => {"
                         " if (window.htmx) htmx.config.defaultSettleDelay = 400; })")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Log in with the keyboard
    page.goto(f"{base}/accounts/login/?next=/batches/{batch_id}/review/")
    page.get_by_label("Username").focus()
    page.keyboard.type(STAFF_USER)
    page.keyboard.press("Tab")
    page.keyboard.type(STAFF_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/review/sheets/*/?batch={batch_id}")

    typed: dict[str, dict[str, str]] = {}
    lefts = []
    saw_score_change = False
    for _ in range(len(DOUBLES)):
        queue = page.locator("#queue")
        lefts.append(int(page.locator("#sheets-left").inner_text()))
        source = page.locator("#sheet-source").inner_text().split(" ")[0]
        inputs = page.locator(".answer-input")
        count = inputs.count()
        assert count >= 1
        choices = typed.setdefault(source, {})
        for i in range(count):
            # The sheet's first field has the focus once the sheet is ready, and each key moves it on
            expect(inputs.nth(i)).to_be_focused()
            field = page.evaluate("document.activeElement.id").removeprefix("answer-")
            value = inputs.nth(i).input_value()
            if len(value) > 1 and field == BLANKED:
                page.keyboard.press("Space")  # blank, and on to the next field
                choices[field] = ""
                continue
            if len(value) > 1:
                score_before = page.locator("#score-value").inner_text()
                page.keyboard.type(KEY[field].lower())  # the field's text is selected: it is replaced
                expect(inputs.nth(i)).to_have_value(KEY[field])
                choices[field] = KEY[field]
                page.keyboard.press("ArrowDown")
                # The correction is saved on leaving the field, and the score follows at once
                expect(page.locator(f"#state-{field}")).to_contain_text(f"corrected: {KEY[field]}")
                expect(page.locator("#score-value")).not_to_have_text(score_before)
                assert float(page.locator("#score-value").inner_text()) == float(score_before) + 1
                saw_score_change = True
            else:
                page.keyboard.press("ArrowDown")
        sheet_id = queue.get_attribute("data-sheet")
        if len(lefts) == 1:
            # A key pressed while the next sheet is arriving is dropped: here an Enter between the
            # swap and the settle (made 3 s long), which must not accept a sheet nobody has seen.
            page.evaluate("htmx.config.defaultSettleDelay = 3000")
            page.keyboard.press("Enter")
            page.wait_for_function(f"() => {{ const q = document.querySelector('#queue');"
                                   f" return q && q.dataset.sheet !== '{sheet_id}'; }}")
            assert page.evaluate("!document.querySelector('#queue').dataset.settled")
            page.keyboard.press("Enter")
            expect(page.locator("#queue[data-settled]")).to_have_count(1, timeout=10_000)
            page.evaluate("htmx.config.defaultSettleDelay = 400")
            continue
        page.keyboard.press("Enter")
        # The next sheet (or the empty queue) replaces this one
        expect(page.locator(f"#queue[data-sheet='{sheet_id}']")).to_have_count(0)

    # The count left went down to zero, shown all along
    expect(page.locator("#queue-empty")).to_contain_text("Nothing left to review")
    assert page.locator("#sheets-left").inner_text() == "0"
    assert lefts == list(range(len(DOUBLES), 0, -1)), lefts
    assert saw_score_change
    assert clicks == [], "the mouse was used"
    assert errors == []

    # The exam's results hold what was typed, and the scores changed with them
    after = results(stack, exam_id)
    assert set(typed) == set(after) == {f"sheet_{n + 1}.jpg" for n in range(len(DOUBLES))}
    for n, doubles in enumerate(DOUBLES):
        row, source = after[f"sheet_{n + 1}.jpg"], f"sheet_{n + 1}.jpg"
        for field, marked in doubles.items():
            assert typed[source][field] == row[field], (source, field, marked)
        expected = 20 - sum(1 for f in doubles if typed[source][f] != KEY[f])
        assert float(row["score"]) == expected, (source, row["score"])
        assert float(before[source]["score"]) == 20 - len(doubles)
    # And the batch has nothing left to review
    status, _h, raw = stack.request("GET", f"/api/batches/{batch_id}")
    assert status == 200 and json.loads(raw)["sheets_needs_review"] == 0
    page.close()
