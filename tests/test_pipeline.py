"""The pipeline run by real Dramatiq Workers on the StubBroker, with the real
engine reading simulated sheets; and the worker faults of docs/reliability.md (W1,
W2, W4, W6; W7 with real processes is in test_end_to_end) at the level where they happen."""

from __future__ import annotations

import csv
import io
import os
import threading
import time

import dramatiq
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import reverse

from batches.models import Answer, Batch, ProgressEvent, Sheet, SheetStatus, Stage
from batches.pipeline import fanout, reading, stages
from batches.uploads import accept
from tests.conftest import TEMPLATE, run_queue, sheets_zip

pytestmark = pytest.mark.django_db(transaction=True)

ORDER = ["uploading", "validating", "extracting", "organizing_qr", "creating_sheets", "processing_sheets",
         "collecting_results", "generating_csv", "loading_database", "cleanup", "completed"]


def upload(api, data: bytes, name: str = "scans.zip", **fields):
    body = {"file": ContentFile(data, name=name), "template": TEMPLATE, "has_qr": "true", **fields}
    return api.post(reverse("batches:api-upload"), body)


def results_rows(batch: Batch) -> list[dict]:
    with default_storage.open(batch.results_csv.name, "rb") as f:
        return list(csv.DictReader(io.StringIO(f.read().decode("utf-8-sig"))))


def assert_stage_order(batch: Batch) -> list[ProgressEvent]:
    events = list(ProgressEvent.objects.filter(batch=batch).order_by("id"))
    stages = [e.stage for e in events]
    seen = list(dict.fromkeys(stages))
    assert seen == ORDER, seen
    assert all(ORDER.index(a) <= ORDER.index(b) for a, b in zip(stages, stages[1:], strict=False))
    overall = [e.overall_percentage for e in events]
    assert overall == sorted(overall)
    return events


def new_batch(owner, data: bytes, name="scans.zip", has_qr=True) -> Batch:
    return accept.create_batch(owner, ContentFile(data, name=name), filename=name, template=TEMPLATE,
                                 has_qr=has_qr, start=False)


def test_an_accepted_upload_is_on_disk_before_its_batch_is_queued(owner, monkeypatch):
    # Given a recorder of what is flushed to disk
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    queued = []
    monkeypatch.setattr(accept.tasks, "enqueue_batch", lambda pk: queued.append(list(synced)))

    # When an upload is stored as a batch
    batch = accept.create_batch(owner, ContentFile(b"\xff\xd8\xff scan", name="scan.jpg"), filename="scan.jpg",
                                  template=TEMPLATE)

    # Then the file and its folder were flushed before the pipeline was queued
    path = default_storage.path(batch.upload.name)
    assert queued == [[path, os.path.dirname(path)]]


def test_upload_runs_every_stage_and_the_csv_matches_the_sheets(api, owner, broker, worker):
    # Given a ZIP of 12 simulated sheets
    data, sheets = sheets_zip(12)

    # When it is uploaded and the workers run
    response = upload(api, data)
    assert response.status_code == 202
    run_queue(broker, worker)

    # Then the batch completed through every stage, in order
    batch = Batch.objects.get(pk=response.json()["batch_id"])
    assert batch.stage == Stage.COMPLETED, batch.error
    assert (batch.sheets_total, batch.sheets_processed, batch.sheets_failed) == (12, 12, 0)
    assert batch.overall_percentage == 100.0
    assert batch.finished_at is not None
    events = assert_stage_order(batch)
    assert events[-1].stage == Stage.COMPLETED

    # And the CSV and the answer rows hold what was filled in
    rows = results_rows(batch)
    assert [r["source_file"] for r in rows] == [s.name for s in sheets]
    for row, sheet in zip(rows, sheets, strict=True):
        assert row["student"] == sheet.student
        assert row["exam"] == "EXAM1"
        for field, value in sheet.answers.items():
            assert row[field] == value, (sheet.name, field)
    assert Answer.objects.filter(sheet__batch=batch).count() == 12 * len(sheets[0].answers)
    assert Sheet.objects.filter(batch=batch, status=SheetStatus.DONE).count() == 12


def test_processing_publishes_in_steps_not_per_sheet(owner, settings):
    # Given a batch of 30 sheets and a long progress interval
    settings.OMR_PROGRESS_INTERVAL = 60
    settings.OMR_CHUNK_SIZE = 2
    data, _sheets = sheets_zip(30)
    batch = new_batch(owner, data)

    # When it runs
    stages.run_inline(batch.pk)

    # Then processing_sheets published its start, a few steps and its end: not 30 events
    processing = ProgressEvent.objects.filter(batch=batch, stage=Stage.PROCESSING_SHEETS)
    assert 3 <= processing.count() <= 6
    assert processing.first().progress_percentage == 0
    assert processing.last().progress_percentage == 100


def test_a_bad_page_fails_alone_and_the_batch_goes_on(owner):
    # Given a ZIP with a text file renamed .png among good sheets (Z9)
    data, _sheets = sheets_zip(3, extra=[("broken.png", b"this is not a picture")])
    batch = new_batch(owner, data)

    # When it runs
    batch = stages.run_inline(batch.pk)

    # Then that one sheet failed with the reason, and the batch completed
    assert batch.stage == Stage.COMPLETED
    bad = Sheet.objects.get(batch=batch, source_name="broken.png")
    assert bad.status == SheetStatus.FAILED
    assert "not an image" in bad.error
    assert bad.needs_review
    assert (batch.sheets_total, batch.sheets_failed) == (4, 1)
    row = [r for r in results_rows(batch) if r["source_file"] == "broken.png"][0]
    assert row["status"] == "failed" and "not an image" in row["error"]


def test_a_page_that_cannot_be_read_keeps_its_reason_on_its_row(owner, monkeypatch):
    # Given a page whose stored image is gone
    data, _sheets = sheets_zip(3)
    batch = new_batch(owner, data)
    real_read_image = Sheet.read_image

    def read_image(sheet):
        if sheet.index == 1:
            raise FileNotFoundError(2, "No such file or directory")
        return real_read_image(sheet)

    monkeypatch.setattr(Sheet, "read_image", read_image)

    # When it runs
    batch = stages.run_inline(batch.pk)

    # Then the sheet failed, needs review, and says why on its row and in the CSV
    assert batch.stage == Stage.COMPLETED
    gone = Sheet.objects.get(batch=batch, index=1)
    assert gone.status == SheetStatus.FAILED and gone.needs_review
    assert gone.error == "page image missing (No such file or directory)"
    assert (batch.sheets_failed, batch.sheets_needs_review) == (1, Sheet.objects.filter(batch=batch,
                                                                                        needs_review=True).count())
    row = [r for r in results_rows(batch) if r["sheet"] == "1"][0]
    assert row["status"] == "failed" and row["error"] == gone.error


def test_bad_archive_fails_the_batch_naming_the_entry(owner):
    from tests.conftest import make_zip

    data = make_zip([("good.jpg", b"x"), ("../../etc/evil.jpg", b"x")])
    batch = stages.run_inline(new_batch(owner, data).pk)
    assert batch.stage == Stage.FAILED
    assert "../../etc/evil.jpg" in batch.error
    last = ProgressEvent.objects.filter(batch=batch).latest("id")
    assert last.stage == Stage.FAILED and "evil.jpg" in last.message
    assert not default_storage.exists(f"batches/{batch.pk}/pages/00001.jpg")


def test_stages_are_idempotent(owner):
    # Given a completed batch
    data, _sheets = sheets_zip(3)
    batch = stages.run_inline(new_batch(owner, data).pk)
    answers = sorted(Answer.objects.filter(sheet__batch=batch).values_list("sheet__index", "field", "value"))

    # When the messages come again (start, every chunk, finish)
    stages.start_batch(batch.pk)
    for sheet_id in Sheet.objects.filter(batch=batch).values_list("pk", flat=True):
        fanout.process_chunk(batch.pk, [sheet_id], "another-token")
    stages.finish_batch(batch.pk)

    # Then nothing changed: same rows, same counts, one terminal event
    batch.refresh_from_db()
    assert sorted(Answer.objects.filter(sheet__batch=batch).values_list("sheet__index", "field", "value")) == answers
    assert (batch.sheets_total, batch.sheets_processed) == (3, 3)
    assert ProgressEvent.objects.filter(batch=batch, stage=Stage.COMPLETED).count() == 1

    # And re-running a finishing stage rewrites its rows identically
    Batch.objects.filter(pk=batch.pk).update(stage=Stage.COLLECTING_RESULTS)
    batch.refresh_from_db()
    stages.collect_results(batch)
    stages.load_database(batch)
    batch.refresh_from_db()
    assert (batch.sheets_total, batch.sheets_processed, batch.sheets_failed) == (3, 3, 0)
    assert sorted(Answer.objects.filter(sheet__batch=batch).values_list("sheet__index", "field", "value")) == answers


def test_a_completed_batch_keeps_its_upload_and_csv_and_no_working_folder(owner):
    data, _sheets = sheets_zip(2)
    batch = stages.run_inline(new_batch(owner, data).pk)
    assert batch.stage == Stage.COMPLETED
    folder = default_storage.path(batch.storage_prefix.rstrip("/"))
    assert sorted(os.listdir(folder)) == ["results.csv", "upload"]  # pages read in place from the upload


def test_loading_database_restores_answer_rows_a_read_sheet_lacks(owner):
    # Given a completed batch whose second sheet lost its answer rows
    data, _sheets = sheets_zip(3)
    batch = stages.run_inline(new_batch(owner, data).pk)
    answers = sorted(Answer.objects.filter(sheet__batch=batch).values_list("sheet__index", "field", "value"))
    Answer.objects.filter(sheet__batch=batch, sheet__index=2).delete()
    Batch.objects.filter(pk=batch.pk).update(stage=Stage.GENERATING_CSV)
    batch.refresh_from_db()

    # When the database is loaded again, the rows come back from its reading, and only its rows
    stages.load_database(batch)
    assert sorted(Answer.objects.filter(sheet__batch=batch).values_list("sheet__index", "field", "value")) == answers
    event = ProgressEvent.objects.filter(batch=batch).latest("id")
    assert event.message == f"Database load complete: 3 sheets, {len(answers)} answers"


def start_processing(owner, count: int) -> tuple[Batch, list[list[int]]]:
    data, _sheets = sheets_zip(count)
    batch = new_batch(owner, data)
    chunks = stages.start_batch(batch.pk)
    batch.refresh_from_db()
    assert batch.stage == Stage.PROCESSING_SHEETS
    return batch, chunks


def test_w1_message_back_after_its_worker_was_killed(owner):
    # Given a chunk whose worker claimed its sheets and died before storing them
    batch, chunks = start_processing(owner, 3)
    ids = [i for chunk in chunks for i in chunk]
    fanout.claim_sheets(batch.pk, ids, "message-1")
    Sheet.objects.filter(pk__in=ids).update(attempts=1)

    # When the broker delivers the same message again
    moved_on = fanout.process_chunk(batch.pk, ids, "message-1")

    # Then every sheet is stored exactly once and the batch moves on
    assert moved_on
    assert Sheet.objects.filter(batch=batch, status=SheetStatus.DONE).count() == 3
    fields = Answer.objects.filter(sheet__batch=batch).values_list("sheet_id", "field")
    assert len(fields) == len(set(fields)) == 3 * 22
    batch.refresh_from_db()
    assert (batch.sheets_processed, batch.stage) == (3, Stage.COLLECTING_RESULTS)


def test_w1_start_message_back_after_its_worker_died_while_sending_the_chunks(owner):
    # Given a batch in processing_sheets whose first chunk was read, and whose
    # other chunks were never sent (the worker was killed while sending them)
    batch, chunks = start_processing(owner, 6)
    fanout.process_chunk(batch.pk, chunks[0], "message-1")

    # When the broker delivers the start message again
    again = stages.start_batch(batch.pk)

    # Then the sheets nobody has taken are sent again, and only those
    untaken = sorted(Sheet.objects.filter(batch=batch, status=SheetStatus.PENDING).values_list("pk", flat=True))
    assert sorted(i for chunk in again for i in chunk) == untaken
    assert untaken and not set(chunks[0]) & set(untaken)
    for chunk in again:
        fanout.process_chunk(batch.pk, chunk)
    batch.refresh_from_db()
    assert batch.stage == Stage.COLLECTING_RESULTS and batch.sheets_processed == 6


def test_w1_expired_claims_are_taken_over(owner):
    # Given sheets claimed by a worker that vanished long ago
    batch, chunks = start_processing(owner, 2)
    ids = chunks[0]
    fanout.claim_sheets(batch.pk, ids, "lost-worker")
    Sheet.objects.filter(pk__in=ids).update(claimed_at=Sheet.objects.get(pk=ids[0]).claimed_at
                                            - fanout.SHEET_LEASE * 2)

    # When the reconcile step sends them out again, under a new message id
    stale = fanout.stale_chunks(batch.pk)
    assert sorted(i for c in stale for i in c) == sorted(i for c in chunks for i in c)
    for chunk in stale:
        fanout.process_chunk(batch.pk, chunk, "reconcile-1")

    # Then they are read and stored once
    assert Sheet.objects.filter(batch=batch, status=SheetStatus.DONE).count() == 2


class WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs in that attempt."""


def test_w2_a_sheet_that_kills_its_worker_every_time_is_given_up(owner, monkeypatch, settings):
    # Given a chunk of four sheets, the second of which kills its worker
    settings.OMR_SHEET_MAX_ATTEMPTS = 3
    batch, _chunks = start_processing(owner, 4)
    ids = list(Sheet.objects.filter(batch=batch).order_by("index").values_list("pk", flat=True))
    poison = ids[1]
    real_read = reading.read_sheet

    def read(sheet, batch_):
        if sheet.pk == poison:
            raise WorkerKilled()
        return real_read(sheet, batch_)

    monkeypatch.setattr(reading, "read_sheet", read)

    # When the broker keeps delivering the message after each crash
    for _ in range(10):
        try:
            if fanout.process_chunk(batch.pk, ids, "message-7"):
                break
        except WorkerKilled:
            continue

    # Then the poison sheet failed after 3 attempts, the others were read once, and the batch goes on
    sheet = Sheet.objects.get(pk=poison)
    assert sheet.status == SheetStatus.FAILED and sheet.attempts == 3
    assert "stopped its worker" in sheet.error
    assert Sheet.objects.filter(batch=batch, status=SheetStatus.DONE).count() == 3
    batch.refresh_from_db()
    assert (batch.sheets_processed, batch.sheets_failed, batch.stage) == (4, 1, Stage.COLLECTING_RESULTS)


def test_w4_same_message_twice_at_once_gives_one_result(owner):
    # Given one chunk delivered to two workers at the same moment
    batch, chunks = start_processing(owner, 4)
    ids = [i for chunk in chunks for i in chunk]
    barrier = threading.Barrier(2)
    outcomes = []

    def deliver():
        from django.db import connection

        try:
            barrier.wait()
            outcomes.append(fanout.process_chunk(batch.pk, ids, "message-dup"))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then each sheet has one set of answers, counts are right, and one delivery moved the batch on
    fields = list(Answer.objects.filter(sheet__batch=batch).values_list("sheet_id", "field"))
    assert len(fields) == len(set(fields)) == 4 * 22
    batch.refresh_from_db()
    assert (batch.sheets_processed, batch.sheets_failed) == (4, 0)
    assert sorted(outcomes) == [False, True]
    assert ProgressEvent.objects.filter(batch=batch, stage=Stage.PROCESSING_SHEETS,
                                        progress_percentage=100).count() == 1


def wait_for_batch(batch_id, timeout: float = 60.0) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = Batch.objects.get(pk=batch_id)
        if batch.is_finished:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch still {batch.stage} after {timeout} s")


def test_w6_lost_messages_are_sent_again_by_reconcile(api, broker, settings):
    # Given a batch being read by a worker, one sheet per message
    settings.OMR_CHUNK_SIZE = 1
    data, _sheets = sheets_zip(16)
    batch_id = upload(api, data).json()["batch_id"]
    first = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    first.start()
    deadline = time.monotonic() + 30
    while Batch.objects.get(pk=batch_id).sheets_processed < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    # When the worker stops and its queued messages are lost (the stub broker,
    # like a Redis that restarted without its data, keeps nothing)
    first.stop()
    broker.flush_all()
    batch = Batch.objects.get(pk=batch_id)
    assert batch.stage == Stage.PROCESSING_SHEETS and batch.sheets_processed < 16

    # And a new worker starts and the reconcile command runs
    second = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    second.start()
    try:
        call_command("reconcile_batches", "--idle-seconds", "0", stdout=io.StringIO())
        batch = wait_for_batch(batch_id)
    finally:
        second.stop()

    # Then the batch finishes with every sheet read once
    assert batch.stage == Stage.COMPLETED, batch.error
    assert (batch.sheets_processed, batch.sheets_failed) == (16, 0)
    assert Answer.objects.filter(sheet__batch=batch).count() == 16 * 22


def test_retry_of_a_failed_batch_runs_again(api, owner, broker, worker, monkeypatch):
    # Given a batch that failed in extraction
    data, _sheets = sheets_zip(2)
    batch = new_batch(owner, data)

    def broken(*args, **kwargs):
        raise stages.BatchError("storage was down")

    monkeypatch.setattr(stages, "extract", broken)
    batch = stages.run_inline(batch.pk)
    assert batch.stage == Stage.FAILED and batch.error == "storage was down"
    monkeypatch.undo()

    # When it is retried
    response = api.post(reverse("batches:api-retry", args=[batch.pk]))
    assert response.status_code == 202
    run_queue(broker, worker)

    # Then it completes, and its overall percentage never went backwards
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED
    assert batch.error == ""
    overall = list(ProgressEvent.objects.filter(batch=batch).values_list("overall_percentage", flat=True))
    assert overall == sorted(overall)
    # A completed batch cannot be retried
    assert api.post(reverse("batches:api-retry", args=[batch.pk])).status_code == 409


def test_pdf_and_multipage_tiff_pages_become_sheets(owner):
    import numpy as np
    from PIL import Image

    from tests.conftest import simulated_sheet

    # Fresh images (no JPEG metadata for the TIFF writer to trip over).
    pages = [Image.fromarray(np.asarray(Image.open(io.BytesIO(simulated_sheet(i).jpeg)).convert("L")))
             for i in range(2)]
    pdf, tiff = io.BytesIO(), io.BytesIO()
    pages[0].copy().save(tiff, "TIFF", save_all=True, append_images=pages[1:], dpi=(300, 300))
    pages[0].copy().save(pdf, "PDF", save_all=True, append_images=pages[1:], resolution=300)

    for name, data in (("scans.pdf", pdf.getvalue()), ("scans.tif", tiff.getvalue())):
        batch = stages.run_inline(new_batch(owner, data, name=name).pk)
        assert batch.stage == Stage.COMPLETED, batch.error
        sheets = list(Sheet.objects.filter(batch=batch).order_by("index"))
        assert [(s.source_name, s.source_page) for s in sheets] == [(name, 1), (name, 2)]
        assert [s.student for s in sheets] == [simulated_sheet(0).student, simulated_sheet(1).student]
        assert all(s.status == SheetStatus.DONE for s in sheets)


def test_malformed_pdf_fails_with_a_clear_reason(owner):
    batch = stages.run_inline(new_batch(owner, b"%PDF-1.4\nnot really a pdf", name="scan.pdf").pk)
    assert batch.stage == Stage.FAILED
    assert "scan.pdf" in batch.error and "damaged" in batch.error


def test_a_chunk_that_fails_every_retry_costs_its_sheets_not_the_batch(owner, broker, worker, monkeypatch, settings):
    # Given a batch whose first chunk cannot be stored (a database error, every time)
    data, _sheets = sheets_zip(4)
    batch = new_batch(owner, data)
    chunks = stages.start_batch(batch.pk)
    bad = set(chunks[0])
    real_store = fanout.store_results

    def store(batch_id, token, results):
        if {r.sheet_id for r in results} & bad and any(r.status == SheetStatus.DONE for r in results):
            raise RuntimeError("database went away")
        return real_store(batch_id, token, results)

    monkeypatch.setattr(fanout, "store_results", store)
    from batches.pipeline import tasks

    monkeypatch.setattr(tasks.process_sheets, "options", {**tasks.process_sheets.options, "max_retries": 1,
                                                          "min_backoff": 10, "max_backoff": 20})

    # When the chunks run and the bad one exhausts its retries
    tasks.send_chunks(str(batch.pk), chunks)
    run_queue(broker, worker, fail_fast=False)

    # Then its sheets are failed, the others read, and the batch completed
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED, batch.error
    assert (batch.sheets_processed, batch.sheets_failed) == (4, len(bad))
    assert set(Sheet.objects.filter(batch=batch, status=SheetStatus.FAILED).values_list("pk", flat=True)) == bad


@pytest.mark.parametrize("total", [1, 7, 20, 79, 500, 2003])
def test_split_chunks_keeps_every_sheet_once_in_order_and_ends_in_small_pieces(total):
    ids = list(range(100, 100 + total))
    chunks = fanout.split_chunks(ids)
    assert [i for chunk in chunks for i in chunk] == ids
    size = fanout.chunk_size(total)
    assert max(len(c) for c in chunks) <= size
    if size >= 4:
        # The last chunks are a quarter of the size, so the workers finish together.
        assert all(len(c) <= size // 4 for c in chunks[-4:])
        assert sum(len(c) for c in chunks if len(c) <= size // 4) >= min(total, 4 * size) - size // 4


def test_w3_a_passing_database_error_while_storing_is_retried_without_duplicate_rows(api, owner, broker, worker,
                                                                                     monkeypatch):
    # Given a batch whose first store of a chunk loses the database half-way
    # (after the answer rows went in, before the sheet rows did)
    from django.db import OperationalError

    real_update = fanout.update_sheets
    failures = []

    def flaky_update(values, now):
        if not failures:
            failures.append(len(values))
            raise OperationalError("server closed the connection unexpectedly")
        return real_update(values, now)

    monkeypatch.setattr(fanout, "update_sheets", flaky_update)
    data, sheets = sheets_zip(6)

    # When it is uploaded and the workers run (Dramatiq retries the chunk with backoff)
    response = upload(api, data)
    run_queue(broker, worker, fail_fast=False)

    # Then the error happened once, the transaction left nothing half-stored,
    # and the retry stored every sheet exactly once
    assert failures and failures[0] >= 1
    batch = Batch.objects.get(pk=response.json()["batch_id"])
    assert batch.stage == Stage.COMPLETED, batch.error
    assert (batch.sheets_total, batch.sheets_processed, batch.sheets_failed) == (6, 6, 0)
    fields = list(Answer.objects.filter(sheet__batch=batch).values_list("sheet_id", "field"))
    assert len(fields) == len(set(fields)) == 6 * 22
    assert Sheet.objects.filter(batch=batch, status=SheetStatus.DONE).count() == 6
    assert len(results_rows(batch)) == 6


def test_w3_actors_retry_with_backoff_and_outages_for_as_long_as_they_last(settings):
    from django.db import OperationalError

    from batches.pipeline import tasks

    outage = OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")
    for actor in (tasks.process_batch, tasks.process_sheets, tasks.finish_batch):
        rule = actor.options["retry_when"]
        assert actor.options["min_backoff"] >= 1_000 and actor.options["on_retry_exhausted"] == "batch_failed"
        # Any other error: a few tries
        assert rule(2, ValueError("bug")) and not rule(5, ValueError("bug"))
        # An outage: retried, at most OMR_OUTAGE_MAX_BACKOFF_MS apart, for the whole budget (an hour)
        assert actor.options["max_backoff"] == settings.OMR_OUTAGE_MAX_BACKOFF_MS
        assert rule(100, outage) and not rule(settings.OMR_OUTAGE_RETRIES, outage)
        assert settings.OMR_OUTAGE_RETRIES * settings.OMR_OUTAGE_MAX_BACKOFF_MS >= 60 * 60_000


def test_w3_redis_down_while_publishing_costs_only_the_wake_up(owner, monkeypatch):
    # Given a channel layer that cannot reach Redis
    from batches import progress

    class DownLayer:
        async def group_send(self, *args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(progress, "get_channel_layer", lambda: DownLayer())
    data, _sheets = sheets_zip(2)
    batch = new_batch(owner, data)

    # When the whole pipeline runs
    stages.run_inline(batch.pk)

    # Then it completed and every event is in the database, where streams read them
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED
    assert_stage_order(batch)


def test_the_pixel_cap_of_the_settings_applies_to_the_pages_and_is_named(owner, settings):
    # Given a cap lower than a 300-dpi A4 page (2480 x 3508 pixels)
    settings.OMR_MAX_PIXELS = 5_000_000
    data, _sheets = sheets_zip(2)

    # When the batch runs
    batch = stages.run_inline(new_batch(owner, data).pk)

    # Then each page failed before decoding, saying which limit and which setting; the batch completed
    assert batch.stage == Stage.COMPLETED and batch.sheets_failed == 2
    errors = set(Sheet.objects.filter(batch=batch).values_list("error", flat=True))
    assert errors == {"image is 2480 x 3508 pixels, over the limit of 5 MP (OMR_MAX_PIXELS)"}, errors
