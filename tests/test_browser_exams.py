"""The exam pages in a real browser: Chromium (Playwright) against Django's
live test server. A staff user creates an exam in the form (after a mistake
shown under its field), imports a roster from a CSV file (after a file with a
bad row, refused by line), then opens the results of a batch of simulated
sheets scored by the services, sorts them by score, filters a group and
turns a page of the table with htmx, and reads the item analysis.

Needs /usr/bin/chromium (``bin/setup --browser``) and the ``playwright`` package.
"""

from __future__ import annotations

from pathlib import Path

import playwright.sync_api as playwright_api
import pytest

from batches.exams import exports, results
from batches.exams.models import Exam, SheetScore

from .conftest import CHROMIUM
from .exam_class import OPTIONS, TEMPLATE, make_keys
from .exam_helpers import add_batch, reading

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} missing (bin/setup --browser installs it)", pytrace=False)

STUDENTS = 24


def test_create_an_exam_import_a_roster_and_read_the_results(live_server, browser, django_user_model, tmp_path,
                                                             monkeypatch):
    import numpy as np

    # Playwright's sync API keeps an event loop in this thread; the test's own
    # database calls are plain synchronous ones all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    from batches.scoring.simulate import simulate_answers

    expect = playwright_api.expect
    django_user_model.objects.create_user("teacher", password="teacher-pw-1", is_staff=True)
    rng = np.random.default_rng(5)
    keys = make_keys(rng, 10)
    key_a = "".join(keys["A"].values())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # Batches here are made by the services, finished: their page has no stream to follow.
    streams = []
    page.on("request", lambda r: streams.append(r.url) if "progress-stream" in r.url else None)

    # Given a staff user who logs in and opens the exams
    page.goto(f"{live_server.url}/exams/")
    page.get_by_label("Username").fill("teacher")
    page.get_by_label("Password").fill("teacher-pw-1")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Exams")).to_be_visible()
    page.get_by_role("link", name="New exam").first.click()

    # When they choose a template (htmx brings its key fields) and type a key with a letter not on the sheet
    page.get_by_label("Name").fill("Geography quiz")
    page.get_by_label("Sheet template").select_option(TEMPLATE)
    expect(page.locator("#key-fields")).to_contain_text("50 questions")  # was the default template's 100
    expect(page.get_by_label("Key of version D")).to_be_visible()
    page.get_by_label("Key of version A").fill(key_a[:3] + "Z" + key_a[4:])
    page.get_by_label("A wrong answer earns").fill("-0.25")
    page.get_by_role("button", name="Create exam").click()

    # Then the form comes back with the problem under the key, and what was typed kept
    expect(page.locator("#key_A-errors")).to_contain_text("q4: 'Z' is not an answer to q4 (options A, B, C, D, E)")
    expect(page.get_by_label("Name")).to_have_value("Geography quiz")
    assert not Exam.objects.exists()

    # When the key is put right
    page.get_by_label("Key of version A").fill(key_a)
    page.get_by_label("Key of version B").fill("".join(keys["B"].values()))
    page.get_by_role("button", name="Create exam").click()

    # Then the exam's page shows it
    expect(page.get_by_role("heading", name="Geography quiz")).to_be_visible()
    expect(page.locator("#key")).to_contain_text(key_a[:5] + " " + key_a[5:])
    page.get_by_role("link", name="Edit key and rules").click()
    expect(page.get_by_label("Key of version A")).to_have_value(key_a[:5] + " " + key_a[5:])
    page.go_back()
    exam = Exam.objects.get()
    assert exam.rules["wrong"] == -0.25 and exam.rules["keys"]["A"] == keys["A"]

    # When a roster with a bad row is imported, then a good one
    bad = tmp_path / "roster-bad.csv"
    bad.write_text("number,name,group\n3001,Ana,North\n3002,,South\n")
    page.get_by_label("Roster CSV").set_input_files(str(bad))
    page.get_by_role("button", name="Import roster").click()
    expect(page.locator("#roster-errors")).to_contain_text("line 3: no name")
    numbers = [f"30{n:02d}" for n in range(1, STUDENTS + 1)]
    good = tmp_path / "roster.csv"
    good.write_text("number,name,group\n" + "".join(f"{n},Student {n},{'North' if i % 2 else 'South'}\n"
                                                     for i, n in enumerate(numbers)))
    page.get_by_label("Roster CSV").set_input_files(str(good))
    page.get_by_role("button", name="Import roster").click()
    expect(page.locator(".messages")).to_contain_text(f"Roster imported: {STUDENTS} added")
    assert exam.roster.count() == STUDENTS

    # And a batch of simulated sheets for the exam is scored by the services
    answers = simulate_answers(rng, STUDENTS, list(keys["A"].values()), OPTIONS)
    readings = [reading({"student_number": n, "exam_version": "A", **{f"q{i + 1}": a for i, a in enumerate(row)}},
                        template=TEMPLATE, qr=False) for n, row in zip(numbers, answers, strict=True)]
    batch = add_batch(exam.owner, exam, readings, template=TEMPLATE)
    scores = dict(SheetScore.objects.filter(batch=batch).values_list("student", "score"))
    assert len(scores) == STUDENTS

    # When they open the results from the batch page
    page.goto(f"{live_server.url}/batches/{batch.pk}/")
    expect(page.locator("#count-absent")).to_have_text("0")
    page.get_by_role("link", name="Scores of this batch").click()
    expect(page.get_by_role("heading", name="Results of Geography quiz")).to_be_visible()
    expect(page.locator("#sheets-scored")).to_have_text(str(STUDENTS))
    assert page.locator("svg.histogram rect.bar").count() == len(exports.summary_json(exam)["histogram"])

    # Then sorting by score (htmx, no reload) orders the rows, highest first on the second click
    page.evaluate("window.__same_page = true")
    page.locator('th[data-column="score"] a').click()
    expect(page.locator('th[data-column="score"]')).to_have_attribute("aria-sort", "ascending")
    page.locator('th[data-column="score"] a').click()
    expect(page.locator('th[data-column="score"]')).to_have_attribute("aria-sort", "descending")
    shown = page.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.student)")
    assert [scores[s] for s in shown] == sorted(scores.values(), reverse=True)
    assert page.evaluate("window.__same_page") is True  # swapped in place
    assert "sort=score" in page.url and "order=desc" in page.url

    # And filtering a group keeps only its students
    page.locator("#group-filter").select_option("North")
    expect(page.locator("#row-count")).to_contain_text(f"{STUDENTS // 2} sheets in group North")
    shown = page.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.student)")
    assert set(shown) == {n for i, n in enumerate(numbers) if i % 2}
    assert page.evaluate("window.__same_page") is True

    # And a long table comes a page at a time: Next brings the next rows in place, in the same order
    monkeypatch.setattr(results, "ROWS_PER_PAGE", 5)
    page.locator("#group-filter").select_option("")
    expect(page.locator("#page-number")).to_have_text(f"Page 1 of {-(-STUDENTS // 5)}")
    first = page.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.student)")
    page.locator("#results-pager a[rel=next]").click()
    expect(page.locator("#page-number")).to_have_text(f"Page 2 of {-(-STUDENTS // 5)}")
    expect(page.locator("#row-count")).to_contain_text(f"{STUDENTS} sheets; showing 6–10")
    second = page.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.student)")
    assert [scores[s] for s in first + second] == sorted(scores.values(), reverse=True)[:10]
    assert "page=2" in page.url and "sort=score" in page.url
    assert page.evaluate("window.__same_page") is True

    # And the item analysis lists every question with the key marked
    items = exports.items_json(exam)["items"]
    assert page.locator("#items tbody tr").count() == len(items)
    for q in ("q1", "q10"):
        key = keys["A"][q]
        expect(page.locator(f'#items tr[data-question="{q}"] .option.key[data-option="{key}"]')).to_have_count(1)
    assert streams == [], streams


def test_the_upload_page_sends_the_exam_with_the_file(live_server, browser, django_user_model, tmp_path, monkeypatch,
                                                      broker):
    from batches.models import Batch
    from batches.omr.template import load_template

    from .conftest import make_zip
    from .exam_helpers import make_exam

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    teacher = django_user_model.objects.create_user("teacher", password="teacher-pw-1", is_staff=True)
    exam = make_exam(teacher, template="a4-20q-4", name="Walk-in test")
    from batches.omr.synthetic import simulate

    sheet = simulate.simulate_sheet(load_template("a4-20q-4"), simulate.random_answers("a4-20q-4", 1, 3), seed=3)
    scans = tmp_path / "scans.zip"
    scans.write_bytes(make_zip([("scan_001.jpg", sheet.encode_jpeg())]))

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # The batch page's stream would follow a batch that no worker runs here.
    page.route("**/progress-stream*", lambda route: route.abort())  # with or without ?last_event_id
    tus_requests = []
    page.on("request", lambda r: tus_requests.append(r.method) if "/api/uploads/" in r.url else None)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill("teacher")
    page.get_by_label("Password").fill("teacher-pw-1")
    page.get_by_role("button", name="Log in").click()

    # Given the exam's "Upload scans" button, which chooses the exam and its template
    page.goto(f"{live_server.url}/exams/{exam.pk}/")
    page.get_by_role("link", name="Upload scans", exact=True).click()
    expect = playwright_api.expect
    expect(page.get_by_label("Exam")).to_have_value(str(exam.pk))
    expect(page.get_by_label("Sheet template")).to_have_value("a4-20q-4")

    # When the file goes up (through tus, in the browser)
    page.get_by_label("Scanned sheets").set_input_files(str(scans))
    page.get_by_role("button", name="Upload and read").click()
    page.wait_for_url(f"{live_server.url}/batches/*/", timeout=60_000)

    # Then the batch is the exam's, on its template
    batch = Batch.objects.get()
    assert batch.exam_id == exam.pk and batch.template == "a4-20q-4"
    assert page.url.endswith(f"/batches/{batch.pk}/")
    assert "POST" in tus_requests and "PATCH" in tus_requests
