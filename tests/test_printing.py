"""Printing from the browser: an exam's roster PDF (one sheet per student, in
order, each page's QR code read back by the engine's reader and the name found
in the page's text), walk-in and template blank sheets, access, the worker-built
download with its progress, and its expiry."""

from __future__ import annotations

import datetime
import io

import pypdfium2 as pdfium
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from batches.exams import roster
from batches.models import PrintJob, PrintState
from batches.omr.layout import page_layout
from batches.omr.reader import read_sheet
from batches.omr.render import render_pdf_page_image
from batches.omr.template import load_template
from batches.printing import services
from tests.conftest import run_queue
from tests.exam_helpers import TWO_PAGES, make_exam

DPI = 150
ROSTER = """student_number,name,group
3003,Carla Diaz,B
1001,Zoe Adams,A
2002,Ana Brown,B
4004,Ben Cole,A
"""
BY_GROUP = ["4004", "1001", "2002", "3003"]  # A: Ben Cole, Zoe Adams; B: Ana Brown, Carla Diaz
AS_IMPORTED = ["3003", "1001", "2002", "4004"]


def pdf_pages(data: bytes, template_name: str) -> list[tuple[object, str]]:
    """Each page's QR code as the engine reads it from the rendered page, and its text."""
    t = load_template(template_name)
    doc = pdfium.PdfDocument(data)
    try:
        out = []
        for i in range(len(doc)):
            layout = page_layout(t, i % t.pages + 1, DPI)
            reading = read_sheet(render_pdf_page_image(data, i, DPI, layout.width, layout.height), t)
            assert reading.error is None, (i, reading.error)
            out.append((reading.qr, doc[i].get_textpage().get_text_bounded()))
        return out
    finally:
        doc.close()


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def exam(owner):
    exam = make_exam(owner, name="Physics 1")
    roster.import_roster_csv(exam, ROSTER)
    return exam


def print_url(exam) -> str:
    return reverse("batches:exam-print", args=[exam.pk])


@pytest.mark.django_db
def test_the_roster_pdf_has_a_sheet_per_student_by_group_then_name_and_the_walk_in_sheets(owner, exam):
    # When staff print the roster by group with two blank sheets for walk-ins
    response = login(owner).post(print_url(exam), {"roster": "on", "order": "group", "blanks": "2"})

    # Then the PDF comes at once, one page per student in order, then the blanks
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "application/pdf"
    assert 'filename="physics-1-roster-and-2-blank.pdf"' in response["Content-Disposition"]
    pages = pdf_pages(response.content, exam.template)
    assert len(pages) == 6
    names = {e.student_number: e for e in exam.roster.all()}
    for (qr, text), number in zip(pages, BY_GROUP, strict=False):
        entry = names[number]
        assert (qr.exam, qr.student, qr.page, qr.pages) == (str(exam.pk), number, 1, 1)
        assert f"{entry.name} ({number}, group {entry.group})" in text
    for qr, text in pages[4:]:
        assert (qr.exam, qr.student) == (str(exam.pk), "")
        assert not any(e.name in text for e in names.values())


@pytest.mark.django_db
def test_the_roster_as_imported_and_only_blank_sheets(owner, exam):
    client = login(owner)
    pages = pdf_pages(client.post(print_url(exam), {"roster": "on", "order": "imported", "blanks": "0"}).content,
                      exam.template)
    assert [qr.student for qr, _text in pages] == AS_IMPORTED

    blanks = client.post(print_url(exam), {"order": "group", "blanks": "3"})
    assert 'filename="physics-1-3-blank.pdf"' in blanks["Content-Disposition"]
    assert [(qr.exam, qr.student) for qr, _text in pdf_pages(blanks.content, exam.template)] == [(str(exam.pk), "")] * 3


@pytest.mark.django_db
def test_a_two_page_template_gives_each_student_page_1_and_2_of_2(owner):
    exam = make_exam(owner, template=TWO_PAGES, name="Long test")
    roster.import_roster_csv(exam, "11,Ida Moss\n12,Jon Kay,G2\n")
    response = login(owner).post(print_url(exam), {"roster": "on", "order": "imported", "blanks": "1"})
    pages = pdf_pages(response.content, TWO_PAGES)
    assert [(qr.student, qr.page, qr.pages) for qr, _t in pages] == [
        ("11", 1, 2), ("11", 2, 2), ("12", 1, 2), ("12", 2, 2), ("", 1, 2), ("", 2, 2)]
    assert "Ida Moss (11)" in pages[1][1] and "Jon Kay (12, group G2)" in pages[3][1]


@pytest.mark.django_db
def test_the_print_section_shows_the_roster_count_and_refuses_an_empty_print(owner):
    exam = make_exam(owner, name="Empty")
    client = login(owner)
    page = client.get(print_url(exam))
    assert page.status_code == 200
    assert b"(0 students)" in page.content and b'id="print-section"' in page.content
    refused = client.post(print_url(exam), {"roster": "on", "order": "group", "blanks": "0"})
    assert refused.status_code == 400
    assert b"Nothing was printed." in refused.content and b"the roster is empty" in refused.content
    too_many = client.post(print_url(exam), {"order": "group", "blanks": str(services.MAX_BLANKS + 1)})
    assert too_many.status_code == 400 and too_many["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_another_users_exam_and_prints_are_not_found(owner, colleague, outsider, exam):
    job = PrintJob.objects.create(owner=owner, exam=exam, template=exam.template, filename="x.pdf",
                                  expires_at=timezone.now() + datetime.timedelta(hours=1))
    bob = login(colleague)
    assert bob.get(print_url(exam)).status_code == 404
    assert bob.post(print_url(exam), {"roster": "on", "order": "group", "blanks": "0"}).status_code == 404
    assert bob.get(reverse("batches:exam-print-job", args=[exam.pk, job.pk])).status_code == 404
    assert bob.get(reverse("batches:exam-print-download", args=[exam.pk, job.pk])).status_code == 404
    # A job of Bob's own exam is not reachable under Alice's exam either
    bobs = make_exam(colleague, name="Bob's")
    assert bob.get(reverse("batches:exam-print-job", args=[bobs.pk, job.pk])).status_code == 404
    # Not staff: to the login page
    eve = login(outsider).get(print_url(exam))
    assert eve.status_code == 302 and "/accounts/login/" in eve["Location"]


@pytest.mark.django_db
def test_blank_sheets_of_any_template_without_an_exam(owner):
    client = login(owner)
    page = client.get(reverse("batches:print-blank") + "?template=letter-20q-4")
    assert page.status_code == 200 and b'value="letter-20q-4" selected' in page.content
    upload = client.get(reverse("batches:upload"))
    assert reverse("batches:print-blank").encode() in upload.content

    response = client.post(reverse("batches:print-blank"), {"template": "letter-20q-4", "count": "3"})
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert 'filename="letter-20q-4-3-blank.pdf"' in response["Content-Disposition"]
    pages = pdf_pages(response.content, "letter-20q-4")
    assert [(qr.template, qr.exam, qr.student) for qr, _t in pages] == [("letter-20q-4", "", "")] * 3

    assert client.post(reverse("batches:print-blank"), {"template": "no-such", "count": "3"}).status_code == 400
    assert client.post(reverse("batches:print-blank"), {"template": "a4-20q-4", "count": "0"}).status_code == 400
    with pytest.raises(services.PrintError, match="no sheet template 'no-such'"):
        services.blank_plan("no-such", 2)


@pytest.mark.django_db(transaction=True)
def test_a_large_roster_is_built_by_a_worker_with_progress_then_downloaded(owner, exam, broker, worker, settings,
                                                                          monkeypatch):
    # Given a server that builds prints over 3 pages in a worker, and a class of 9
    settings.OMR_PRINT_IN_REQUEST_PAGES = 3
    roster.import_roster_csv(exam, "".join(f"{5000 + i},Student {i:02d},C\n" for i in range(5)))
    seen = []
    monkeypatch.setattr(services, "PROGRESS_EVERY", 0.0)
    original = services.write_pdf

    def watched(plan, out, progress=None):
        def spy(done):
            progress(done)
            job = PrintJob.objects.get()
            seen.append((job.state, job.sheets_done, job.sheets_total))
        return original(plan, out, spy)

    monkeypatch.setattr(services, "write_pdf", watched)
    client = login(owner)

    # When they print it
    response = client.post(print_url(exam), {"roster": "on", "order": "group", "blanks": "1"})

    # Then they are sent back to the page, where the job's row polls its status
    assert response.status_code == 302 and response["Location"] == print_url(exam)
    job = PrintJob.objects.get()
    assert (job.state, job.sheets_total, job.exam_id) == (PrintState.QUEUED, 10, exam.pk)
    status_url = reverse("batches:exam-print-job", args=[exam.pk, job.pk])
    page = client.get(print_url(exam)).content.decode()
    assert f'hx-get="{status_url}"' in page and 'hx-trigger="every 1s"' in page
    assert client.get(reverse("batches:exam-print-download", args=[exam.pk, job.pk])).status_code == 404

    # And the worker builds it, its progress written as it goes
    run_queue(broker, worker)
    assert seen == [(PrintState.RUNNING, n, 10) for n in range(1, 11)]
    job.refresh_from_db()
    assert (job.state, job.sheets_done, job.pages, job.error) == (PrintState.DONE, 10, 10, "")
    assert job.file == f"exams/{exam.pk}/prints/{job.pk}.pdf" and default_storage.exists(job.file)
    assert job.expires_at > timezone.now() + datetime.timedelta(hours=23)

    # And the row, done, stops polling and offers the download
    row = client.get(status_url).content.decode()
    assert "hx-trigger" not in row and "Download physics-1-roster-and-1-blank.pdf" in row and "10 pages" in row
    download = client.get(reverse("batches:exam-print-download", args=[exam.pk, job.pk]))
    assert download.status_code == 200 and download["Content-Type"] == "application/pdf"
    data = b"".join(download.streaming_content)
    assert len(data) == job.size
    pages = pdf_pages(data, exam.template)
    expected = ["4004", "1001", "2002", "3003"] + [f"{5000 + i}" for i in range(5)] + [""]
    assert [qr.student for qr, _t in pages] == expected
    assert "Student 03 (5003, group C)" in pages[7][1]


@pytest.mark.django_db
def test_a_job_whose_print_became_empty_fails_saying_why(owner):
    exam = make_exam(owner, name="Gone")
    job = PrintJob.objects.create(owner=owner, exam=exam, template=exam.template, filename="gone.pdf",
                                  options={"roster": True, "order": "group", "blanks": 0},
                                  expires_at=timezone.now() + datetime.timedelta(hours=1))
    services.run_job(str(job.pk))
    job.refresh_from_db()
    assert job.state == PrintState.FAILED and "the roster is empty" in job.error
    services.run_job(str(job.pk))  # a second delivery leaves a finished job alone
    job.refresh_from_db()
    assert job.state == PrintState.FAILED


@pytest.mark.django_db
def test_cleanup_removes_expired_prints_and_keeps_the_others(owner, exam):
    now = timezone.now()
    jobs = []
    for hours in (-1, 5):
        job = PrintJob.objects.create(owner=owner, exam=exam, template=exam.template, filename="p.pdf",
                                      state=PrintState.DONE, expires_at=now + datetime.timedelta(hours=hours))
        job.file = services.job_storage_name(job)
        default_storage.save(job.file, io.BytesIO(b"%PDF-1.4 test"))
        job.save()
        jobs.append(job)
    expired, kept = jobs
    call_command("cleanup_uploads", "--dry-run", stdout=io.StringIO())
    assert PrintJob.objects.count() == 2
    call_command("cleanup_uploads", stdout=(out := io.StringIO()))
    assert "1 expired prints" in out.getvalue()
    assert list(PrintJob.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not default_storage.exists(expired.file) and default_storage.exists(kept.file)


@pytest.mark.django_db
def test_the_actor_is_time_limited_and_a_job_out_of_retries_fails_saying_so(owner, exam):
    from batches.printing.tasks import build_print, print_failed

    assert build_print.options["time_limit"] == 20 * 60_000 and build_print.options["max_retries"] == 2
    job = PrintJob.objects.create(owner=owner, exam=exam, template=exam.template, filename="p.pdf",
                                  state=PrintState.RUNNING, expires_at=timezone.now() + datetime.timedelta(hours=1))
    print_failed.fn({"actor_name": "build_print", "args": [str(job.pk)]}, {"retries": 2})
    job.refresh_from_db()
    assert job.state == PrintState.FAILED and "could not build this PDF" in job.error
    row = login(owner).get(reverse("batches:exam-print-job", args=[exam.pk, job.pk])).content.decode()
    assert "could not build this PDF" in row and "hx-trigger" not in row
