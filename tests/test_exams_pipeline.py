"""A batch uploaded for an exam through the API, run by a real Dramatiq
Worker on the StubBroker with the real engine reading simulated sheets, comes
out scored: every student matched to the roster (by QR code, or by the
student-number grid on a walk-in's blank sheet) and every score right."""

from __future__ import annotations

import random

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from batches.exams import report, roster
from batches.exams.models import SheetScore
from batches.models import Batch, Sheet, Stage
from batches.review import actions as review
from tests.conftest import make_zip, run_queue
from tests.exam_helpers import KEY_A, KEY_B, TEMPLATE, make_exam

pytestmark = pytest.mark.django_db(transaction=True)

POINTS = {"q1": 2.0}
WRONG = -0.25


def expected_score(answers: dict, key: dict) -> float:
    """The issue's rules, written out plainly: right earns the points, a blank
    and a multiple mark 0, any other answer ``WRONG``."""
    total = 0.0
    for q, right in key.items():
        given = answers.get(q, "")
        if given == right:
            total += POINTS.get(q, 1.0)
        elif given and len(given) == 1:
            total += WRONG
    return total


def simulated_class(exam_id: int, students: list[str]):
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(TEMPLATE)
    sheets = []
    for i, student in enumerate(students):
        version = "AB"[i % 2]
        answers = simulate.random_answers(t, 1, random.Random(100 + i), student=student, exam=version,
                                          multiple_rate=0.1, blank_rate=0.1)
        # Half the class has sheets printed with their name in the QR code; the others are walk-ins
        qr_student = student if i % 2 == 0 else ""
        sim = simulate.simulate_sheet(t, answers, seed=100 + i, preset="clean", exam=str(exam_id), student=qr_student)
        sheets.append((f"scan_{i:03d}.jpg", sim.encode_jpeg(), sim.truth["answers"], version))
    return sheets


def test_an_exam_batch_through_the_pipeline_scores_every_student_right(api, owner, broker, worker):
    # Given an exam with two versions, fractional rules and a roster of eight
    exam = make_exam(owner, points=POINTS, wrong=WRONG)
    students = [f"20{n:02d}" for n in range(1, 9)]
    roster.import_roster_csv(exam, "".join(f"{s},Student {s},G{int(s) % 2}\n" for s in students))
    sheets = simulated_class(exam.pk, students)

    # When their sheets are uploaded for the exam and the workers run
    data = make_zip([(name, jpeg) for name, jpeg, _a, _v in sheets])
    response = api.post(reverse("batches:api-upload"),
                        {"file": ContentFile(data, name="exam.zip"), "exam": str(exam.pk), "has_qr": "true"})
    assert response.status_code == 202, response.content
    run_queue(broker, worker)

    # Then the batch completed and every sheet was matched and scored right
    batch = Batch.objects.get(pk=response.json()["batch_id"])
    assert batch.stage == Stage.COMPLETED, batch.error
    rows = {r.student: r for r in SheetScore.objects.filter(batch=batch).select_related("roster_entry")}
    assert sorted(rows) == students
    for (name, _jpeg, truth, version), student in zip(sheets, students, strict=True):
        row = rows[student]
        key = KEY_A if version == "A" else KEY_B
        assert row.version == version and row.problem == ""
        assert row.roster_entry.name == f"Student {student}"
        assert row.score == pytest.approx(expected_score(truth, key)), (name, truth)
        assert row.max_score == 21
    got = report.batch_report(batch)
    assert got["unknown_students"] == [] and got["duplicates"] == [] and got["absent"] == []

    # And the API gives the same scores and the statistics over the eight sheets
    scored = api.get(f"/api/batches/{batch.pk}/scores").json()
    assert {s["student"]: s["score"] for s in scored["sheets"]} == {s: rows[s].score for s in students}
    assert api.get(f"/api/exams/{exam.pk}/items.json").json()["students"] == 8

    # And a correction, then a new reading of the same page, keep the score true
    first = Sheet.objects.get(batch=batch, index=1)
    _name, _jpeg, truth, version = sheets[0]
    key = KEY_A if version == "A" else KEY_B
    review.apply_corrections(first, owner, {"q5": key["q5"]})
    corrected = {**truth, "q5": key["q5"]}
    assert SheetScore.objects.get(sheet=first).score == pytest.approx(expected_score(corrected, key))
    scored_at = SheetScore.objects.get(sheet=first).scored_at
    review.read_again(first, owner)
    again = SheetScore.objects.get(sheet=first)
    assert again.scored_at > scored_at  # scored again from the new reading, the correction kept
    assert again.score == pytest.approx(expected_score(corrected, key))
    assert SheetScore.objects.filter(batch=batch).count() == 8
