"""Faults of the server's own, at the level where they happen: an outage while
storing never fails a sheet nor counts against it, a lost advance and lost
messages are found by the recovery job, a start delivered twice extracts
once, and a completed batch retries the sheets the server failed. (The same
faults with real processes: ``test_faults_end_to_end.py``.)"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.urls import reverse
from django.utils import timezone

from batches import lifecycle
from batches.models import Answer, Batch, Lease, Sheet, Stage
from batches.pipeline import claims, fanout, recovery, stages, tasks
from tests.conftest import run_queue, sheets_zip
from tests.test_pipeline import assert_stage_order, new_batch, results_rows, upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def quick_retries(monkeypatch):
    """The actors' backoff in milliseconds instead of seconds (the rule stays)."""
    for actor in (tasks.process_batch, tasks.process_sheets, tasks.finish_batch):
        monkeypatch.setattr(actor, "options", {**actor.options, "min_backoff": 5, "max_backoff": 20})


def test_an_outage_while_storing_is_retried_for_as_long_as_it_lasts_and_counts_no_attempt(
        owner, broker, worker, monkeypatch, quick_retries, settings):
    # Given a database that refuses every store for longer than the sheet's
    # attempts and the other errors' retries allow (8 stores in a row)
    settings.OMR_CHUNK_SIZE = 2
    real_store = fanout.store_results
    refused = []

    def store(batch_id, token, results):
        if len(refused) < 8:
            refused.append([r.sheet_id for r in results])
            raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")
        return real_store(batch_id, token, results)

    monkeypatch.setattr(fanout, "store_results", store)
    data, _sheets = sheets_zip(4)
    batch = new_batch(owner, data)

    # When the batch runs on the workers
    tasks.process_batch.send(str(batch.pk))
    run_queue(broker, worker, fail_fast=False)

    # Then the outage was retried past OMR_SHEET_MAX_ATTEMPTS, and still no
    # sheet was failed: every one read and stored once, the batch completed
    assert len(refused) == 8 > settings.OMR_SHEET_MAX_ATTEMPTS
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED, batch.error
    assert (batch.sheets_processed, batch.sheets_failed) == (4, 0)
    assert not Sheet.objects.filter(batch=batch, error__contains="stopped its worker").exists()
    fields = list(Answer.objects.filter(sheet__batch=batch).values_list("sheet_id", "field"))
    assert len(fields) == len(set(fields)) == 4 * 22
    # And the attempts count only the read that was stored (no crash happened)
    assert set(Sheet.objects.filter(batch=batch).values_list("attempts", flat=True)) == {1}


def start(owner, count: int) -> tuple[Batch, list[list[int]]]:
    data, _sheets = sheets_zip(count)
    batch = new_batch(owner, data)
    chunks = stages.start_batch(batch.pk)
    return batch, chunks


def test_a_start_delivered_twice_extracts_and_creates_the_sheets_once(owner, monkeypatch):
    # Given a batch whose start is running (message A) when a second message
    # for it (B: a duplicate send, or one the recovery job sent) is delivered
    data, _sheets = sheets_zip(3)
    batch = new_batch(owner, data)
    real_extract = stages.extract
    second = {}

    def extract_with_a_second_delivery(b):
        second["chunks"] = stages.start_batch(b.pk, "message-B")
        second["sheets"] = Sheet.objects.filter(batch=b).count()
        real_extract(b)

    monkeypatch.setattr(stages, "extract", extract_with_a_second_delivery)

    # When both run
    chunks = stages.start_batch(batch.pk, "message-A")

    # Then B found the batch claimed and did nothing; A created each sheet once
    assert second == {"chunks": [], "sheets": 0}
    assert sorted(i for c in chunks for i in c) == sorted(Sheet.objects.filter(batch=batch).values_list("pk",
                                                                                                        flat=True))
    assert Sheet.objects.filter(batch=batch).count() == 3
    batch.refresh_from_db()
    assert batch.stage == Stage.PROCESSING_SHEETS and batch.run_claim == ""
    # And A's own redelivery (after its worker died) may go on, a stale claim may be taken over
    assert claims.claim_run(batch, "message-A") and not claims.claim_run(batch, "message-C")
    Batch.objects.filter(pk=batch.pk).update(run_claimed_at=timezone.now() - claims.RUN_LEASE - timedelta(1))
    assert claims.claim_run(batch, "message-C")


def test_a_lost_advance_is_found_and_the_batch_completes(owner, broker, worker, monkeypatch):
    # Given a batch whose sheets are all stored, but the move to
    # collecting_results was lost (the database went away just after the store)
    batch, chunks = start(owner, 4)
    monkeypatch.setattr(lifecycle, "finish_processing", lambda batch_id: None)
    for chunk in chunks:
        fanout.process_chunk(batch.pk, chunk)
    monkeypatch.undo()
    batch.refresh_from_db()
    assert batch.stage == Stage.PROCESSING_SHEETS and batch.sheets_processed == 4

    # When the recovery job finds it idle
    assert recovery.recover(timedelta(seconds=60)) == []  # not idle yet: left alone
    done = recovery.recover(timedelta(seconds=0))
    run_queue(broker, worker)

    # Then it moved on and completed, every sheet once in the results
    assert done == [f"{batch.pk}: every sheet stored: moved on to collecting_results"]
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED, batch.error
    assert_stage_order(batch)
    assert sorted(int(r["sheet"]) for r in results_rows(batch)) == [1, 2, 3, 4]


def test_a_lost_advance_with_counts_behind_is_recounted(owner, broker, worker):
    # Given every sheet stored but the batch's count behind (its update lost)
    batch, chunks = start(owner, 2)
    for chunk in chunks:
        fanout.process_chunk(batch.pk, chunk)
    Batch.objects.filter(pk=batch.pk).update(stage=Stage.PROCESSING_SHEETS, sheets_processed=1)

    # When the recovery job runs
    recovery.recover(timedelta(seconds=0))
    run_queue(broker, worker)

    # Then the counts come from the rows and the batch completes
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED and batch.sheets_processed == 2


def test_lost_start_and_finish_messages_are_sent_again(owner, broker, worker):
    # Given a batch queued whose start message was lost, and one whose finish was
    data, _sheets = sheets_zip(2)
    queued = new_batch(owner, data)
    finishing, chunks = start(owner, 2)
    for chunk in chunks:
        fanout.process_chunk(finishing.pk, chunk)

    # When the recovery job runs
    done = recovery.recover(timedelta(seconds=0))
    run_queue(broker, worker)

    # Then both complete
    assert len(done) == 2
    for batch in (queued, finishing):
        batch.refresh_from_db()
        assert batch.stage == Stage.COMPLETED, batch.error


def test_pending_sheets_wait_while_another_batch_is_at_work(owner, broker):
    # Given two batches reading: one idle, one that just stored a sheet
    idle, _chunks = start(owner, 2)
    busy, busy_chunks = start(owner, 2)
    old = timezone.now() - timedelta(minutes=5)
    from batches.models import ProgressEvent

    ProgressEvent.objects.filter(batch=idle).update(timestamp=old)
    Batch.objects.filter(pk=idle.pk).update(run_claimed_at=old)
    fanout.process_chunk(busy.pk, busy_chunks[0])

    # When the recovery job runs: the idle batch's sheets may be queued behind the busy one
    assert recovery.recover(timedelta(seconds=60)) == []

    # And once the other one is idle too, they are sent again
    ProgressEvent.objects.filter(batch=busy).update(timestamp=old)
    Batch.objects.filter(pk=busy.pk).update(run_claimed_at=old)
    Sheet.objects.filter(batch=busy).update(claimed_at=old, read_at=old)
    done = recovery.recover(timedelta(seconds=60))
    assert f"{idle.pk}: 2 sheets sent again" in done
    assert broker.queues["default"].qsize() >= 2


def test_one_process_at_a_time_takes_the_recovery_turn():
    # Given two worker processes asking for the turn at once
    first = claims.take_lease(recovery.LEASE_NAME, "host:1", 10)
    second = claims.take_lease(recovery.LEASE_NAME, "host:2", 10)

    # Then one has it until it expires
    assert (first, second) == (True, False)
    Lease.objects.filter(name=recovery.LEASE_NAME).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert claims.take_lease(recovery.LEASE_NAME, "host:2", 10)
    assert Lease.objects.get(name=recovery.LEASE_NAME).holder == "host:2"


def test_reconcile_command_runs_the_same_job(owner, broker):
    batch, _chunks = start(owner, 2)
    out = io.StringIO()
    call_command("reconcile_batches", "--idle-seconds", "0", stdout=out)
    assert f"{batch.pk}: 2 sheets sent again" in out.getvalue() and "1 batches reconciled" in out.getvalue()


def server_failed(owner, count: int, failed: int) -> Batch:
    """A completed batch whose first ``failed`` sheets the server gave up."""
    batch, chunks = start(owner, count)
    ids = [i for c in chunks for i in c]
    fanout.give_up_chunk(batch.pk, ids[:failed], "message-gave-up")
    for i in ids[failed:]:
        fanout.process_chunk(batch.pk, [i])
    stages.finish_batch(batch.pk)
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED and batch.sheets_failed == failed
    return batch


def test_a_completed_batch_retries_the_sheets_the_server_failed(api, owner, broker, worker):
    # Given a completed batch with 2 of 4 sheets failed by the server's trouble
    batch = server_failed(owner, 4, 2)
    before = dict(Sheet.objects.filter(batch=batch).values_list("pk", "read_at"))
    assert len(results_rows(batch)) == 4

    # When its retry is asked for through the API
    response = api.post(reverse("batches:api-retry", args=[batch.pk]))
    run_queue(broker, worker)

    # Then only those sheets were read again, and the results were made again
    assert response.status_code == 202
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED, batch.error
    assert (batch.sheets_processed, batch.sheets_failed) == (4, 0)
    after = dict(Sheet.objects.filter(batch=batch).values_list("pk", "read_at"))
    assert sum(after[pk] != before[pk] for pk in before) == 2
    rows = results_rows(batch)
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    fields = list(Answer.objects.filter(sheet__batch=batch).values_list("sheet_id", "field"))
    assert len(fields) == len(set(fields)) == 4 * 22

    # And a second retry has nothing left to do
    again = api.post(reverse("batches:api-retry", args=[batch.pk]))
    assert again.status_code == 409 and "nothing to retry" in again.json()["error"]


def test_the_batch_page_offers_the_retry_and_runs_it(client, owner, broker, worker):
    # Given a completed batch with a sheet failed by the server's trouble
    batch = server_failed(owner, 2, 1)
    client.force_login(owner)

    # When its page is shown, and the button pressed
    page = client.get(reverse("batches:detail", args=[batch.pk]))
    response = client.post(reverse("batches:retry", args=[batch.pk]))
    run_queue(broker, worker)

    # Then the page offered it, and the sheet was read
    assert b"Read it again" in page.content and b"problem on the server" in page.content
    assert response.status_code == 302
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED and batch.sheets_failed == 0
    assert b"Read it again" not in client.get(reverse("batches:detail", args=[batch.pk])).content


def test_a_completed_batch_without_server_failures_is_not_retried(api, owner, broker, worker):
    data, _sheets = sheets_zip(2)
    batch_id = upload(api, data).json()["batch_id"]
    run_queue(broker, worker)
    response = api.post(reverse("batches:api-retry", args=[batch_id]))
    assert response.status_code == 409
    assert Batch.objects.get(pk=batch_id).stage == Stage.COMPLETED
