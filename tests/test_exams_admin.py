"""Exams in the admin site: a reviewer (staff, not a superuser) creates an
exam with its key as JSON and its roster as a CSV, sees bad rules refused by
name, changes the key (logged, every sheet re-scored), and sees only their
own exams."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from batches.exams.models import Exam, ExamChange, RosterEntry, SheetScore
from batches.roles import REVIEWERS
from tests.exam_helpers import KEY_A, KEY_B, TEMPLATE, add_batch, answers, make_exam, reading

pytestmark = pytest.mark.django_db

ADD = "/admin/batches/exam/add/"


def reviewer_client(user) -> Client:
    user.groups.add(Group.objects.get(name=REVIEWERS))
    client = Client()
    client.force_login(user)
    return client


def form(**fields):
    data = {"name": "Biology", "template": TEMPLATE, "rules": json.dumps({"keys": {"A": KEY_A, "B": KEY_B}}),
            "roster-TOTAL_FORMS": "0", "roster-INITIAL_FORMS": "0", "roster-MIN_NUM_FORMS": "0",
            "roster-MAX_NUM_FORMS": "1000"}
    data.update(fields)
    return data


def test_a_reviewer_creates_an_exam_with_its_roster_from_a_csv(owner):
    client = reviewer_client(owner)
    roster_file = SimpleUploadedFile("roster.csv", b"student_number,name,group\n1001,Ada,1A\n1002,Alan,1B\n")
    response = client.post(ADD, form(roster_csv=roster_file))
    assert response.status_code == 302, response.content.decode()[:2000]
    exam = Exam.objects.get()
    assert exam.owner == owner and exam.rules["keys"] == {"A": KEY_A, "B": KEY_B} and exam.rules["points"]["q1"] == 1
    assert list(RosterEntry.objects.filter(exam=exam).values_list("student_number", "name", "group")) == [
        ("1001", "Ada", "1A"), ("1002", "Alan", "1B")]


def test_bad_rules_and_bad_roster_rows_are_shown_and_nothing_is_saved(owner):
    client = reviewer_client(owner)
    response = client.post(ADD, form(rules=json.dumps({"keys": {"E": KEY_A}})))
    assert response.status_code == 200 and "keys.E: unknown version" in response.content.decode()
    roster_file = SimpleUploadedFile("roster.csv", b"1001,Ada\n,Nobody\n")
    response = client.post(ADD, form(roster_csv=roster_file))
    assert response.status_code == 200 and "line 2: no student number" in response.content.decode()
    assert Exam.objects.count() == 0


def test_changing_the_key_in_the_admin_rescores_and_logs(owner):
    client = reviewer_client(owner)
    exam = make_exam(owner)
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "1001"))])
    assert SheetScore.objects.get().score == 20
    rules = {"keys": {"A": {**KEY_A, "q1": "D"}, "B": KEY_B}}
    response = client.post(f"/admin/batches/exam/{exam.pk}/change/", form(name=exam.name, rules=json.dumps(rules)))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert SheetScore.objects.get().score == 19
    change = ExamChange.objects.get()
    assert change.user == owner and change.rescored == 1


def test_a_reviewer_sees_only_their_own_exams(owner, colleague):
    mine = make_exam(owner, name="Mine")
    theirs = make_exam(colleague, name="Theirs")
    client = reviewer_client(owner)
    page = client.get("/admin/batches/exam/").content.decode()
    assert "Mine" in page and "Theirs" not in page
    assert client.get(f"/admin/batches/exam/{theirs.pk}/change/").status_code in (302, 404)
    assert client.get(f"/admin/batches/exam/{mine.pk}/change/").status_code == 200
