"""The results CSV (X2): formula cells neutralised, numbers kept as numbers,
one row per sheet with every answer."""

from __future__ import annotations

import csv
import io
import os

import pytest
from django.core.files.storage import default_storage

from batches.csvexport import FIXED_COLUMNS, safe_cell, save_results_csv, write_results_csv
from batches.models import Answer, Batch, Sheet, SheetStatus, Stage

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("value", "expected"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
    ("+1+cmd", "'+1+cmd"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tTAB", "'\tTAB"),
    ("\rCR", "'\rCR"),
    ("-12", "-12"),
    ("-", "-"),  # a blank answer as OMRChecker templates write it
    ("+", "+"),
    ("--", "'--"),
    ("+3.5", "+3.5"),
    ("0123456", "0123456"),
    ("BD", "BD"),
    (7, 7),
    (-1.5, -1.5),
    (None, ""),
    (True, "true"),
])
def test_safe_cell(value, expected):
    assert safe_cell(value) == expected


def test_csv_rows_hold_every_answer_and_neutralised_names(owner):
    batch = Batch.objects.create(owner=owner, template="a4-20q-4", stage=Stage.COMPLETED)
    sheet = Sheet.objects.create(batch=batch, index=1, source_name="=cmd|' /C calc'!A0.jpg", image="x",
                                 status=SheetStatus.DONE, template="a4-20q-4", template_page=1, student="-5",
                                 exam="@exam", flags=["misaligned"], needs_review=True)
    Answer.objects.create(sheet=sheet, field="q1", value="A")
    Answer.objects.create(sheet=sheet, field="q2", value="BD", flags=["multiple"])
    Answer.objects.create(sheet=sheet, field="q3", value="", flags=["blank"])
    Answer.objects.create(sheet=sheet, field="student_number", value="0042")

    out = io.StringIO()
    assert write_results_csv(batch, out) == 1
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    header, row = rows
    assert header[: len(FIXED_COLUMNS)] == FIXED_COLUMNS
    assert header[len(FIXED_COLUMNS):len(FIXED_COLUMNS) + 2] == ["student_number", "exam_version"]
    assert "q20" in header
    cells = dict(zip(header, row, strict=True))
    assert cells["source_file"] == "'=cmd|' /C calc'!A0.jpg"
    assert cells["student"] == "-5"  # a number stays a number
    assert cells["exam"] == "'@exam"
    assert (cells["q1"], cells["q2"], cells["q3"], cells["student_number"]) == ("A", "BD", "", "0042")
    assert cells["flags"] == "misaligned; q2:multiple"
    assert cells["needs_review"] == "true"


def completed_batch_with_csv(owner) -> Batch:
    batch = Batch.objects.create(owner=owner, template="a4-20q-4", stage=Stage.COMPLETED)
    sheet = Sheet.objects.create(batch=batch, index=1, source_name="a.jpg", image="x", status=SheetStatus.DONE)
    Answer.objects.create(sheet=sheet, field="q1", value="A")
    assert save_results_csv(batch) == 1
    return batch


def test_the_csv_is_replaced_in_one_step(owner, monkeypatch):
    # Given a completed batch with its CSV
    batch = completed_batch_with_csv(owner)
    path = default_storage.path(batch.results_csv.name)
    before = open(path, "rb").read()
    Answer.objects.filter(sheet__batch=batch).update(value="B")

    # When the new file cannot be put in place (a crash at that moment)
    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        save_results_csv(batch)

    # Then the batch still has its whole old CSV, and no partial file is left
    batch.refresh_from_db()
    assert open(default_storage.path(batch.results_csv.name), "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == ["results.csv"]

    # And once it can, the new file takes the old one's place, under the same name
    monkeypatch.undo()
    save_results_csv(batch)
    batch.refresh_from_db()
    assert batch.results_csv.name.endswith("/results.csv")
    rows = list(csv.DictReader(io.StringIO(open(path, encoding="utf-8-sig").read())))
    assert [r["q1"] for r in rows] == ["B"]
    assert os.listdir(os.path.dirname(path)) == ["results.csv"]


def test_column_names_from_a_template_are_neutralised_in_the_header_row(owner):
    # An imported template names the columns; a name that is a formula must not run
    batch = Batch.objects.create(owner=owner, template="a4-20q-4", stage=Stage.COMPLETED)
    sheet = Sheet.objects.create(batch=batch, index=1, source_name="a.jpg", image="x", status=SheetStatus.DONE)
    Answer.objects.create(sheet=sheet, field='=HYPERLINK("http://x","y")', value="A")
    Answer.objects.create(sheet=sheet, field="@SUM(A1)", value="B")

    out = io.StringIO()
    write_results_csv(batch, out)
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert "'=HYPERLINK(\"http://x\",\"y\")" in header and "'@SUM(A1)" in header
    assert not any(name.startswith(("=", "+", "@")) for name in header)
    cells = dict(zip(header, row, strict=True))
    assert cells["'@SUM(A1)"] == "B"
