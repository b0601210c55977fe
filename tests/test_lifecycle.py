"""A batch's moves between stages (``batches/lifecycle.py``): each one leaves
only the stages it names, and each records its event; nothing else moves a
batch."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from batches import lifecycle
from batches.models import Batch, ProgressEvent, Stage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def batch(owner):
    return Batch.objects.create(owner=owner, template="a4-20q-4", original_filename="scans.zip", size=10,
                                stage=Stage.UPLOADING)


def stages_of(batch) -> list[str]:
    return list(ProgressEvent.objects.filter(batch=batch).values_list("stage", flat=True))


def test_advance_moves_forward_sets_the_start_and_records_the_event(batch):
    assert lifecycle.advance(batch, Stage.UPLOADING, "Receiving") is not None
    assert Batch.objects.get(pk=batch.pk).started_at is None  # uploading is not yet the run

    event = lifecycle.advance(batch, Stage.VALIDATING, "Checking", progress=50)

    row = Batch.objects.get(pk=batch.pk)
    assert event.stage == row.stage == batch.stage == Stage.VALIDATING
    assert row.started_at is not None and batch.started_at == row.started_at
    assert row.overall_percentage == pytest.approx(6.0) == event.overall_percentage
    assert stages_of(batch) == [Stage.UPLOADING, Stage.VALIDATING]


def test_advance_never_moves_a_batch_back(batch):
    lifecycle.advance(batch, Stage.EXTRACTING, "Extracting")
    started = Batch.objects.get(pk=batch.pk).started_at

    assert lifecycle.advance(batch.pk, Stage.VALIDATING, "Checking again") is None

    row = Batch.objects.get(pk=batch.pk)
    assert row.stage == Stage.EXTRACTING and row.started_at == started
    assert stages_of(batch) == [Stage.EXTRACTING]


def test_a_failed_batch_takes_no_move_but_a_retry(batch):
    lifecycle.advance(batch, Stage.EXTRACTING, "Extracting", progress=50)
    assert lifecycle.fail(batch, "the disk is full").message == "Batch failed: the disk is full"
    row = Batch.objects.get(pk=batch.pk)
    assert (row.stage, row.error) == (Stage.FAILED, "the disk is full") and row.finished_at is not None

    assert lifecycle.advance(batch, Stage.CREATING_SHEETS, "late worker") is None
    assert lifecycle.fail(batch, "twice") is None
    assert lifecycle.complete(batch, "done") is None
    assert lifecycle.retry(batch, "Retry") is not None

    row = Batch.objects.get(pk=batch.pk)
    assert (row.stage, row.error, row.started_at, row.finished_at) == (Stage.QUEUED, "", None, None)
    assert row.overall_percentage == pytest.approx(11.0)  # the bar never goes back
    assert lifecycle.retry(batch, "Retry again") is None  # only a failed batch
    assert stages_of(batch) == [Stage.EXTRACTING, Stage.FAILED, Stage.QUEUED]


def test_complete_only_after_cleanup(batch):
    lifecycle.advance(batch, Stage.GENERATING_CSV, "CSV")
    assert lifecycle.complete(batch, "done") is None
    lifecycle.advance(batch, Stage.CLEANUP, "Cleanup", progress=100)

    assert lifecycle.complete(batch, "done") is not None

    row = Batch.objects.get(pk=batch.pk)
    assert row.stage == Stage.COMPLETED and row.finished_at is not None and row.overall_percentage == 100.0


def test_fail_upload_leaves_a_batch_that_is_past_its_upload_alone(batch):
    lifecycle.advance(batch, Stage.VALIDATING, "Checking")

    assert lifecycle.fail_upload(batch, "the upload expired") is None

    assert Batch.objects.get(pk=batch.pk).stage == Stage.VALIDATING


def test_finish_processing_moves_the_batch_once_every_sheet_is_stored(batch):
    lifecycle.advance(batch, Stage.PROCESSING_SHEETS, "Dispatching")
    Batch.objects.filter(pk=batch.pk).update(sheets_total=4, sheets_processed=3)
    assert lifecycle.finish_processing(batch.pk) is None
    Batch.objects.filter(pk=batch.pk).update(sheets_processed=4, sheets_failed=1)

    event = lifecycle.finish_processing(batch.pk)

    # The event is processing_sheets' last; the batch itself is one stage further.
    assert (event.stage, event.message) == (Stage.PROCESSING_SHEETS, "All 4 sheets processed (1 failed)")
    assert Batch.objects.get(pk=batch.pk).stage == Stage.COLLECTING_RESULTS
    assert lifecycle.finish_processing(batch.pk) is None


def test_of_callers_finishing_processing_at_once_exactly_one_moves_the_batch(batch):
    lifecycle.advance(batch, Stage.PROCESSING_SHEETS, "Dispatching")
    Batch.objects.filter(pk=batch.pk).update(sheets_total=2, sheets_processed=2)
    results = []
    start = threading.Barrier(4)

    def finish():
        start.wait()
        try:
            results.append(lifecycle.finish_processing(batch.pk) is not None)
        finally:
            connection.close()

    threads = [threading.Thread(target=finish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results) == [False, False, False, True]
    assert stages_of(batch).count(Stage.PROCESSING_SHEETS) == 2


def test_a_deleted_batch_takes_no_move(batch):
    Batch.objects.filter(pk=batch.pk).delete()

    assert lifecycle.advance(batch, Stage.VALIDATING, "Checking") is None
    assert lifecycle.fail(batch.pk, "gone") is None
