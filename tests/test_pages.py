"""The browser pages: who may open them (X5), CSRF on state changes (X6),
names escaped (X4), the upload form, the live parts (row polling, the page's
SSE stream of rendered partials ending with ``done``)."""

from __future__ import annotations

import asyncio
import re

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient, Client
from django.urls import reverse

from batches import lifecycle
from batches.models import Batch, ProgressEvent, Sheet, Stage

from .conftest import TEMPLATE, parse_sse, sheets_zip

HOSTILE_NAME = '<script>alert("x")</script>../../etc/passwd\r\nX-Injected: 1.zip'

STAGES = [Stage.VALIDATING, Stage.EXTRACTING, Stage.ORGANIZING_QR, Stage.CREATING_SHEETS, Stage.PROCESSING_SHEETS,
          Stage.COLLECTING_RESULTS, Stage.GENERATING_CSV, Stage.LOADING_DATABASE, Stage.CLEANUP]


def make_batch(owner, name="scans.zip", stage=Stage.UPLOADING, **fields) -> Batch:
    return Batch.objects.create(owner=owner, template=TEMPLATE, original_filename=name, size=2048, stage=stage,
                                **fields)


def publish_run(batch: Batch, sheets: int = 4, review: int = 1, end: str = Stage.COMPLETED) -> None:
    """The events of a whole run, as the pipeline publishes them."""
    lifecycle.advance(batch, Stage.UPLOADING, "Upload complete", progress=100)
    Batch.objects.filter(pk=batch.pk).update(sheets_total=sheets)
    for stage in STAGES:
        lifecycle.advance(batch, stage, f"Starting {stage}")
        if stage == Stage.PROCESSING_SHEETS:
            Batch.objects.filter(pk=batch.pk).update(sheets_processed=sheets // 2)
            lifecycle.advance(batch, stage, f"Processing: {sheets // 2}/{sheets} sheets completed", progress=50)
            Batch.objects.filter(pk=batch.pk).update(sheets_processed=sheets, sheets_needs_review=review)
        lifecycle.advance(batch, stage, f"Finished {stage}", progress=100)
    if end == Stage.FAILED:
        lifecycle.fail(batch, "the disk is full")
    else:
        lifecycle.complete(batch, f"Batch completed: {sheets} of {sheets} sheets read")


def logged_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def page_urls(batch: Batch) -> list[str]:
    return [
        reverse("batches:detail", args=[batch.pk]),
        reverse("batches:row", args=[batch.pk]),
        reverse("batches:progress-stream", args=[batch.pk]),
        reverse("batches:sheet-overlay", args=[batch.pk, 1]),
    ]


# ---------------------------------------------------------------- access


@pytest.mark.django_db
def test_anonymous_users_are_sent_to_the_login_page(owner):
    batch = make_batch(owner)
    client = Client()
    for url in [reverse("batches:list"), reverse("batches:upload"), *page_urls(batch)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("batches:login") + "?next="), url


@pytest.mark.django_db
def test_users_who_are_not_staff_are_sent_to_the_login_page_with_a_reason(owner, outsider):
    batch = make_batch(outsider)
    client = logged_in(outsider)
    response = client.get(reverse("batches:detail", args=[batch.pk]))
    assert response.status_code == 302
    page = client.get(response["Location"])
    assert "Log in with a staff account" in page.content.decode()


@pytest.mark.django_db
def test_a_colleagues_batch_is_not_found_anywhere(owner, colleague):
    # Given Alice's batch with a sheet
    batch = make_batch(owner, stage=Stage.COMPLETED)
    Sheet.objects.create(batch=batch, index=1, source_name="a.jpg", image="nowhere.jpg")
    client = logged_in(colleague)
    # Then Bob gets 404 from every page of it, and his list does not show it
    for url in page_urls(batch):
        assert client.get(url).status_code == 404, url
    assert "scans.zip" not in client.get(reverse("batches:list")).content.decode()


@pytest.mark.django_db
def test_the_owner_sees_their_pages(owner):
    batch = make_batch(owner)
    client = logged_in(owner)
    assert client.get(reverse("batches:list")).status_code == 200
    assert client.get(reverse("batches:upload")).status_code == 200
    assert client.get(reverse("batches:detail", args=[batch.pk])).status_code == 200
    assert client.get(reverse("batches:row", args=[batch.pk])).status_code == 200


@pytest.mark.django_db
def test_login_page_logs_a_staff_user_in_and_goes_to_the_batches(owner):
    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse("batches:login"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    response = client.post(reverse("batches:login"), {"username": "alice", "password": "alice-pw-123",
                                                      "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == reverse("batches:list")
    assert client.get(reverse("batches:list")).status_code == 200


# ---------------------------------------------------------------- CSRF (X6)


def csrf_token_of(client: Client, url: str) -> str:
    html = client.get(url).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


@pytest.mark.django_db
def test_upload_without_a_csrf_token_is_refused(owner):
    # Given a logged-in browser session that enforces CSRF like a real browser
    client = logged_in(owner, enforce_csrf_checks=True)
    data, _sheets = sheets_zip(1)
    from django.core.files.uploadedfile import SimpleUploadedFile

    # When it posts the upload without the token
    response = client.post(reverse("batches:upload"), {
        "file": SimpleUploadedFile("scans.zip", data, "application/zip"), "has_qr": "true", "template": TEMPLATE})
    # Then it is refused and no batch exists
    assert response.status_code == 403
    assert not Batch.objects.exists()

    # And with the token from the page it goes through
    token = csrf_token_of(client, reverse("batches:upload"))
    response = client.post(reverse("batches:upload"), {
        "file": SimpleUploadedFile("scans.zip", data, "application/zip"), "has_qr": "true", "template": TEMPLATE,
        "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Batch.objects.get().owner == owner


@pytest.mark.django_db
def test_htmx_requests_carry_the_csrf_token_from_the_body(owner):
    # The token sits on <body hx-headers>, so every htmx request sends it.
    client = logged_in(owner, enforce_csrf_checks=True)
    html = client.get(reverse("batches:list")).content.decode()
    header = re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'>", html)
    assert header, "CSRF token missing from <body hx-headers>"
    from django.core.files.uploadedfile import SimpleUploadedFile

    data, _sheets = sheets_zip(1)
    response = client.post(reverse("batches:upload"), {
        "file": SimpleUploadedFile("scans.zip", data), "has_qr": "true", "template": TEMPLATE},
        headers={"X-CSRFToken": header.group(1), "HX-Request": "true"})
    assert response.status_code == 204
    assert response["HX-Redirect"] == reverse("batches:detail", args=[Batch.objects.get().pk])


@pytest.mark.django_db
def test_logout_needs_a_post_with_the_token(owner):
    client = logged_in(owner, enforce_csrf_checks=True)
    assert client.post(reverse("batches:logout")).status_code == 403
    assert client.get(reverse("batches:list")).status_code == 200  # still logged in
    token = csrf_token_of(client, reverse("batches:list"))
    assert client.post(reverse("batches:logout"), {"csrfmiddlewaretoken": token}).status_code == 302
    assert client.get(reverse("batches:list")).status_code == 302


# ---------------------------------------------------------------- escaping (X4)


@pytest.mark.django_db(transaction=True)
def test_hostile_file_names_are_escaped_on_every_page(owner):
    # Given a batch whose file name carries HTML, a path and a line break
    batch = make_batch(owner, name=HOSTILE_NAME)
    publish_run(batch)
    client = logged_in(owner)

    # Then the list, the row partial and the detail page show it as text
    for url in [reverse("batches:list"), reverse("batches:row", args=[batch.pk]),
                reverse("batches:detail", args=[batch.pk])]:
        html = client.get(url).content.decode()
        assert "<script>alert" not in html, url
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;../../etc/passwd" in html, url
    # And no response header carries the name (no header injection)
    response = client.get(reverse("batches:detail", args=[batch.pk]))
    assert not any("X-Injected" in k or "X-Injected" in str(v) for k, v in response.items())


# ---------------------------------------------------------------- upload form


def upload(client, name="scans.zip", data=None, **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    if data is None:
        data, _sheets = sheets_zip(1)
    return client.post(reverse("batches:upload"), {
        "file": SimpleUploadedFile(name, data), "has_qr": fields.pop("has_qr", "true"),
        "template": fields.pop("template", TEMPLATE)}, **fields)


@pytest.mark.django_db
def test_the_upload_page_offers_the_built_in_templates_and_the_qr_choice(owner):
    from batches.omr import builtin_names

    html = logged_in(owner).get(reverse("batches:upload")).content.decode()
    for name in builtin_names():
        assert f'value="{name}"' in html
    assert 'name="has_qr"' in html and 'value="false"' in html
    assert 'enctype="multipart/form-data"' in html  # works without JavaScript


@pytest.mark.django_db
def test_an_accepted_upload_goes_to_the_batch_page(owner):
    response = upload(logged_in(owner), has_qr="false")
    batch = Batch.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("batches:detail", args=[batch.pk])
    assert batch.has_qr is False and batch.template == TEMPLATE and batch.original_filename == "scans.zip"


@pytest.mark.django_db
def test_a_file_of_the_wrong_kind_is_refused_with_the_reason(owner):
    response = upload(logged_in(owner), name="notes.docx", data=b"PK\x03\x04 not really")
    assert response.status_code == 422
    html = response.content.decode()
    assert "The upload was refused" in html and "notes.docx" in html and "zip" in html
    assert not Batch.objects.exists()


@pytest.mark.django_db
def test_a_file_over_the_limit_is_refused_with_the_limit(owner, settings):
    settings.OMR_MAX_UPLOAD_BYTES = 1000
    response = upload(logged_in(owner), data=b"x" * 5000)
    assert response.status_code == 422
    assert "is 5,000 bytes; the limit is 1,000 bytes (OMR_MAX_UPLOAD_MB)" in response.content.decode()
    assert not Batch.objects.exists()


@pytest.mark.django_db
def test_a_refused_htmx_upload_gets_only_the_form_back(owner):
    response = upload(logged_in(owner), name="empty.zip", data=b"", headers={"HX-Request": "true"})
    assert response.status_code == 422
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="upload-form"')
    assert "empty" in html and "<html" not in html


@pytest.mark.django_db
def test_an_unknown_template_is_refused(owner):
    response = upload(logged_in(owner), template="../../etc/passwd")
    assert response.status_code == 422
    assert "Select a valid choice" in response.content.decode()


# ---------------------------------------------------------------- list and detail


@pytest.mark.django_db(transaction=True)
def test_running_rows_poll_and_finished_rows_do_not(owner):
    running = make_batch(owner, name="running.zip")
    lifecycle.advance(running, Stage.PROCESSING_SHEETS, "Processing", progress=40)
    finished = make_batch(owner, name="finished.zip")
    publish_run(finished)
    client = logged_in(owner)

    html = client.get(reverse("batches:list")).content.decode()
    running_row = re.search(rf'<tr id="batch-{running.pk}"[^>]*>', html).group(0)
    finished_row = re.search(rf'<tr id="batch-{finished.pk}"[^>]*>', html).group(0)
    assert 'hx-trigger="every 2s"' in running_row
    assert reverse("batches:row", args=[running.pk]) in running_row
    assert "hx-trigger" not in finished_row

    # The row partial is just the row, with the current numbers
    row = client.get(reverse("batches:row", args=[running.pk]), headers={"HX-Request": "true"}).content.decode()
    assert row.lstrip().startswith(f'<tr id="batch-{running.pk}"')
    assert "Processing sheets" in row


@pytest.mark.django_db
def test_the_list_says_how_each_batch_finds_its_template(owner):
    # Pages identified by QR code are read with the template their codes
    # name: the batch's own is only for pages without one.
    by_qr = make_batch(owner, name="qr.zip", has_qr=True)
    in_order = make_batch(owner, name="order.zip", has_qr=False)
    html = logged_in(owner).get(reverse("batches:list")).content.decode()
    qr_row = re.search(rf'<tr id="batch-{by_qr.pk}".*?</tr>', html, re.S).group(0)
    order_row = re.search(rf'<tr id="batch-{in_order.pk}".*?</tr>', html, re.S).group(0)
    assert "by QR code" in qr_row and f"(<code>{TEMPLATE}</code> without one)" in qr_row
    assert "QR" not in order_row and f"<code>{TEMPLATE}</code>" in order_row


@pytest.mark.django_db(transaction=True)
def test_a_running_batch_page_listens_to_its_stream_and_closes_on_done(owner):
    batch = make_batch(owner)
    lifecycle.advance(batch, Stage.EXTRACTING, "Extracting 4 files", progress=50)
    html = logged_in(owner).get(reverse("batches:detail", args=[batch.pk])).content.decode()
    stream = reverse("batches:progress-stream", args=[batch.pk])
    tag = re.search(r'<div id="progress"[^>]*>', html).group(0)
    last = ProgressEvent.objects.filter(batch=batch).latest("id").id
    # The stream starts after the state the page shows (no second copy of it)
    assert 'hx-ext="sse"' in tag and f'sse-connect="{stream}?last_event_id={last}"' in tag
    assert 'sse-swap="progress"' in tag and 'sse-close="done"' in tag
    assert "Extracting" in html and "Extracting 4 files" in html
    # htmx and its SSE extension are served from here, never a CDN
    assert re.search(r'<script src="/static/vendor/htmx/htmx-2\.0\.\d+\.min\.js"', html)
    assert re.search(r'<script src="/static/vendor/htmx/htmx-ext-sse-2\.2\.4\.min\.js"', html)
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()


@pytest.mark.django_db(transaction=True)
def test_a_finished_batch_page_shows_the_results_and_does_not_listen(owner):
    batch = make_batch(owner)
    publish_run(batch, sheets=4, review=1)
    html = logged_in(owner).get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert "sse-connect" not in html
    assert reverse("batches:api-results", args=[batch.pk]) in html
    assert "Download results.csv" in html
    assert "1 sheet to review" in html
    assert 'aria-valuenow="100"' in html
    # Every stage is listed as done, with a duration
    assert html.count('<li class="done"') == 10


@pytest.mark.django_db(transaction=True)
def test_a_finished_batch_shows_how_long_it_ran_to_the_tenth_of_a_second(owner):
    # A small batch runs in under a second: its events carry whole seconds (0),
    # its start and end the run's real length.
    from datetime import timedelta

    batch = make_batch(owner)
    publish_run(batch)
    batch.refresh_from_db()
    Batch.objects.filter(pk=batch.pk).update(finished_at=batch.started_at + timedelta(seconds=0.34))
    client = logged_in(owner)
    html = client.get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert re.search(r'id="elapsed">0\.3 s<', html), re.search(r'id="elapsed">[^<]*<', html)
    assert '<div class="muted">0.3 s</div>' in client.get(reverse("batches:list")).content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_page_says_why(owner):
    batch = make_batch(owner)
    publish_run(batch, end=Stage.FAILED)
    html = logged_in(owner).get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert "the disk is full" in html and "This batch failed" in html
    assert "Download results.csv" not in html


# ---------------------------------------------------------------- the page stream


async def read_page_stream(user, batch, *, while_streaming=None, timeout=10.0):
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(reverse("batches:progress-stream", args=[batch.pk]))
    assert response.status_code == 200
    raw = b""
    task = None
    iterator = response.streaming_content.__aiter__()
    try:
        raw += await asyncio.wait_for(iterator.__anext__(), timeout)
        if while_streaming is not None:
            task = asyncio.ensure_future(while_streaming())
        while True:
            try:
                raw += await asyncio.wait_for(iterator.__anext__(), timeout)
            except StopAsyncIteration:
                break
    finally:
        if task is not None:
            await task
        await iterator.aclose()
    return response, parse_sse(raw)


@pytest.mark.django_db(transaction=True)
def test_the_page_stream_of_a_finished_batch_sends_the_final_partial_then_done(owner):
    # Given a batch that finished with nobody watching
    batch = make_batch(owner)
    publish_run(batch, sheets=4, review=1)
    last = ProgressEvent.objects.filter(batch=batch).latest("id")

    # When the page connects
    response, frames = async_to_sync(read_page_stream)(owner, batch)

    # Then it gets one rendered partial of the final state, then "done", then the end
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache" and response["X-Accel-Buffering"] == "no"
    events = [f for f in frames if "event" in f]
    assert [e["event"] for e in events] == ["progress", "done"]
    html = events[0]["data"]
    assert events[0]["id"] == str(last.id)
    assert "Completed" in html and "Download results.csv" in html and "1 sheet to review" in html
    assert "<html" not in html  # a partial, not a page
    assert events[1]["data"] == "completed"


@pytest.mark.django_db(transaction=True)
def test_the_page_stream_follows_a_running_batch_to_the_end(owner, settings):
    # Given a page connected while the batch is still uploading (the slow poll
    # means only the channel-layer wake-ups can deliver in time)
    settings.OMR_STREAM_POLL = 30.0
    batch = make_batch(owner)
    lifecycle.advance(batch, Stage.UPLOADING, "Receiving scans.zip")

    async def run_batch():
        await asyncio.sleep(0.1)
        await sync_to_async(publish_run)(batch, 4, 0)

    # When the batch runs to its end
    _response, frames = async_to_sync(read_page_stream)(owner, batch, while_streaming=run_batch, timeout=5.0)

    # Then every event arrives as a rendered partial, in order, and "done" ends the stream
    events = [f for f in frames if "event" in f]
    assert events[-1] == {"event": "done", "data": "completed"}
    partials = [e for e in events if e["event"] == "progress"]
    ids = [int(e["id"]) for e in partials]
    assert ids == sorted(ids) and ids[-1] == ProgressEvent.objects.filter(batch=batch).latest("id").id
    assert "Receiving scans.zip" in partials[0]["data"]
    assert any("Processing: 2/4 sheets completed" in p["data"] for p in partials)
    assert 'aria-valuenow="100"' in partials[-1]["data"] and "Download results.csv" in partials[-1]["data"]
    # Stage changes are announced to screen readers (out of band), repeats are not
    announced = [p["data"] for p in partials if 'hx-swap-oob="innerHTML:#stage-announcer"' in p["data"]]
    assert 1 < len(announced) < len(partials)
    # And the partials escape what they show
    assert all("<script" not in p["data"] for p in partials)
    # A batch of no exam has no exam report to bring
    assert not any("exam-section" in p["data"] for p in partials)


@pytest.mark.django_db(transaction=True)
def test_the_page_stream_brings_the_exam_report_when_the_batch_completes(owner, settings):
    from batches.exams import roster

    from .exam_helpers import make_exam

    # Given a batch of an exam whose page was drawn while it ran: no report yet
    settings.OMR_STREAM_POLL = 30.0
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "number,name,group\n1001,Ada,G1\n1002,Ben,G1\n")
    batch = make_batch(owner, exam=exam)
    lifecycle.advance(batch, Stage.UPLOADING, "Receiving scans.zip")
    page = logged_in(owner).get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert '<div class="exam-section" id="exam-section"></div>' in page

    async def run_batch():
        await asyncio.sleep(0.1)
        await sync_to_async(publish_run)(batch, 4, 0)

    # When the batch completes while the page listens
    _response, frames = async_to_sync(read_page_stream)(owner, batch, while_streaming=run_batch, timeout=5.0)

    # Then the last partial swaps the report in (the two students on the roster have no sheet), and only it does
    partials = [f["data"] for f in frames if f.get("event") == "progress"]
    last = partials[-1]
    assert '<div class="exam-section" id="exam-section" hx-swap-oob="true">' in last
    assert re.search(r'id="count-absent">\s*2\s*<', last) and "Matching to the roster" in last
    assert not any("exam-section" in p for p in partials[:-1])


@pytest.mark.django_db(transaction=True)
def test_the_page_stream_of_a_hostile_name_batch_escapes(owner):
    batch = make_batch(owner, name=HOSTILE_NAME)
    publish_run(batch, end=Stage.FAILED)
    Batch.objects.filter(pk=batch.pk).update(error=f"{HOSTILE_NAME} is broken")
    _response, frames = async_to_sync(read_page_stream)(owner, batch)
    html = next(f for f in frames if f.get("event") == "progress")["data"]
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert frames[-1] == {"event": "done", "data": "failed"}


def test_durations_show_the_precision_they_have():
    from batches.templatetags.batch_pages import duration
    from batches.web.timeline import format_duration

    # Stage times come from timestamps; the elapsed time of events is whole seconds.
    assert [format_duration(v) for v in (0.44, 3.0, 3, 12.6, 75, 3725)] == [
        "0.4 s", "3.0 s", "3 s", "13 s", "1 min 15 s", "1 h 02 min"]
    assert (duration(3), duration(2.25), duration(None), duration("x")) == ("3 s", "2.2 s", "", "")
