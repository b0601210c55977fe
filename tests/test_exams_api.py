"""The exams' JSON API as the issue fixes it: POST /api/exams (201, 400
naming the unknown version, question or option, the defaults), GET and PUT
(the whole exam again, every sheet re-scored and the change logged), another
user's exam 404, exam= on the upload and in the tus metadata, and an
OMRChecker evaluation.json imported as the key and rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from batches.exams.models import Exam, ExamChange, SheetScore
from tests.exam_helpers import KEY_A, KEY_B, TEMPLATE, add_batch, answers, make_exam, reading

pytestmark = pytest.mark.django_db

EXAMS = "/api/exams"
DATA = Path(__file__).resolve().parent / "data" / "omrchecker-evaluation"


def post(api, body, path=EXAMS):
    return api.post(path, json.dumps(body), content_type="application/json")


def put(api, exam_id, body):
    return api.put(f"{EXAMS}/{exam_id}", json.dumps(body), content_type="application/json")


def exam_body(**rules):
    return {"name": "Chemistry", "template": TEMPLATE, "keys": {"A": KEY_A, "B": KEY_B}, **rules}


def test_post_creates_the_exam_and_get_gives_it_back_with_the_defaults(api, owner):
    # When an exam is posted with keys only
    response = post(api, exam_body())

    # Then it is created: 201 with its id and url
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"exam_id", "url"}
    assert body["url"].endswith(f"/api/exams/{body['exam_id']}")
    exam = Exam.objects.get(pk=body["exam_id"])
    assert exam.owner == owner and exam.template == TEMPLATE

    # And GET gives it back with the defaults: 1 point a question, 0 for wrong/blank/multiple
    got = api.get(body["url"]).json()
    assert got["name"] == "Chemistry" and got["template"] == TEMPLATE
    assert got["keys"] == {"A": KEY_A, "B": KEY_B}
    assert got["points"] == {f"q{i}": 1.0 for i in range(1, 21)}
    assert (got["wrong"], got["blank"], got["multiple"]) == (0, 0, 0)
    assert got["accepted"] == {} and got["dropped"] == []
    assert got["max_score"] == 20
    assert got["versions"] == ["A", "B", "C", "D"]


def test_post_keeps_fractional_points_penalties_accepted_and_dropped(api):
    body = exam_body(points={"q1": 2, "q2": 0.5}, wrong=-0.25, blank=0, multiple=-0.5,
                     accepted={"q3": ["A", "C"], "q9": ["BD"]}, dropped=["q7"])
    exam_id = post(api, body).json()["exam_id"]
    got = api.get(f"{EXAMS}/{exam_id}").json()
    assert got["points"]["q1"] == 2 and got["points"]["q2"] == 0.5 and got["points"]["q3"] == 1
    assert got["wrong"] == -0.25 and got["multiple"] == -0.5
    assert got["accepted"] == {"q3": ["A", "C"], "q9": ["BD"]}
    assert got["dropped"] == ["q7"]
    assert got["max_score"] == 18 + 2 + 0.5


@pytest.mark.parametrize("change, words", [
    ({"keys": {"A": KEY_A, "E": KEY_A}}, "keys.E: unknown version 'E'"),
    ({"keys": {"A": {**KEY_A, "q99": "B"}}}, "keys.A.q99: unknown question 'q99'"),
    ({"keys": {"A": {**KEY_A, "q2": "Z"}}}, "keys.A.q2: 'Z' is not an answer to q2"),
    ({"accepted": {"q4": ["X"]}}, "accepted.q4[0]: 'X' is not an answer to q4"),
    ({"points": {"q1": 0}}, "points.q1: must be a number more than 0"),
    ({"template": "no-such-sheet"}, "unknown template 'no-such-sheet'"),
    ({"name": ""}, "name: required"),
])
def test_post_refuses_with_400_naming_the_problem(api, change, words):
    response = post(api, {**exam_body(), **change})
    assert response.status_code == 400
    body = response.json()
    assert words in body["error"]
    assert Exam.objects.count() == 0


def test_every_problem_is_named_at_once(api):
    response = post(api, exam_body(keys={"E": KEY_A, "A": {"q99": "B", "q2": "Z"}}))
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert any("keys.E" in e for e in errors) and any("q99" in e for e in errors)
    assert any("keys.A.q2" in e for e in errors)


def test_a_body_that_is_not_json_is_400(api):
    response = api.post(EXAMS, b"{not json", content_type="application/json")
    assert response.status_code == 400 and "not JSON" in response.json()["error"]


def test_another_users_exam_is_404_and_is_left_alone(api, colleague_api, admin_user):
    from tests.conftest import token_client

    exam_id = post(api, exam_body()).json()["exam_id"]
    url = f"{EXAMS}/{exam_id}"
    for path in ("", "/results.csv", "/results.xlsx", "/items.json", "/items.csv", "/report", "/roster",
                 "/changes", "/summary"):
        assert colleague_api.get(url + path).status_code == 404, path
    assert put(colleague_api, exam_id, exam_body(name="taken")).status_code == 404
    assert colleague_api.post(url + "/roster", b"1,A", content_type="text/csv").status_code == 404
    assert Exam.objects.get(pk=exam_id).name == "Chemistry"
    assert colleague_api.get(EXAMS).json()["exams"] == []
    # A superuser sees every exam, as every batch
    assert token_client(admin_user).get(url).status_code == 200


def test_unauthenticated_and_non_staff_are_refused(client, outsider):
    from tests.conftest import token_client

    assert client.get(EXAMS).status_code == 401
    assert token_client(outsider).post(EXAMS, "{}", content_type="application/json").status_code == 403


def test_put_replaces_the_key_rescores_every_sheet_and_logs_the_change(api, owner):
    # Given an exam whose two sheets are scored
    exam_id = post(api, exam_body()).json()["exam_id"]
    exam = Exam.objects.get(pk=exam_id)
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "111")), reading(answers(KEY_B, "B", "222", wrong=("q1",)))])
    assert sorted(SheetScore.objects.values_list("score", flat=True)) == [19, 20]

    # When the key of q1 on version A is changed, a wrong answer costs 0.5, and q2 is dropped
    new_key = {**KEY_A, "q1": "D"}
    response = put(api, exam_id, exam_body(keys={"A": new_key, "B": KEY_B}, wrong=-0.5, dropped=["q2"]))

    # Then the answer already carries the new scores
    assert response.status_code == 200, response.content
    assert response.json()["rescored"] == 2
    by_student = dict(SheetScore.objects.values_list("student", "score"))
    # 111 answered A on q1: now wrong (-0.5); q2 dropped gives its point anyway: 18 + 1 - 0.5
    assert by_student == {"111": 18.5, "222": 18.5}
    # And the change is logged: who, when, old and new
    change = ExamChange.objects.get(exam_id=exam_id)
    assert change.user == owner and change.rescored == 2
    assert change.old["rules"]["keys"]["A"]["q1"] == "A" and change.new["rules"]["keys"]["A"]["q1"] == "D"
    assert change.new["rules"]["wrong"] == -0.5
    history = api.get(f"{EXAMS}/{exam_id}/changes").json()["changes"]
    assert [c["change_id"] for c in history] == [change.pk] and history[0]["user"] == "alice"
    # And the statistics follow: q1 is now right on one sheet of two
    items = api.get(f"{EXAMS}/{exam_id}/items.json").json()
    assert items["students"] == 2
    assert items["items"]["q1"]["difficulty"] == 0.0  # 111 read A (now wrong), 222 read C (wrong on B)
    assert "q2" not in items["items"]


def test_put_of_the_same_exam_changes_nothing_and_logs_nothing(api):
    exam_id = post(api, exam_body()).json()["exam_id"]
    got = api.get(f"{EXAMS}/{exam_id}").json()
    response = put(api, exam_id, got)  # what GET gives, PUT takes
    assert response.status_code == 200 and response.json()["change_id"] is None
    assert ExamChange.objects.count() == 0


def test_put_refuses_what_post_refuses_and_keeps_the_exam(api):
    exam_id = post(api, exam_body()).json()["exam_id"]
    response = put(api, exam_id, exam_body(keys={"F": KEY_A}))
    assert response.status_code == 400 and "keys.F: unknown version 'F'" in response.json()["error"]
    assert Exam.objects.get(pk=exam_id).rules["keys"] == {"A": KEY_A, "B": KEY_B}


def test_the_template_of_an_exam_with_sheets_does_not_change(api, owner):
    exam_id = post(api, exam_body()).json()["exam_id"]
    add_batch(owner, Exam.objects.get(pk=exam_id), [reading(answers(KEY_A, "A", "1"))])
    response = put(api, exam_id, exam_body(template="a4-20q-5"))
    assert response.status_code == 409 and "a4-20q-4" in response.json()["error"]


# ---------------------------------------------------------------- uploads for an exam


def test_upload_takes_exam_and_the_exams_template(api, owner):
    exam = make_exam(owner, template="a4-50q-5")
    response = api.post(reverse("batches:api-upload"),
                        {"file": ContentFile(b"\xff\xd8\xff scan", name="scan.jpg"), "exam": str(exam.pk)})
    assert response.status_code == 202, response.content
    batch = exam.batches.get()
    assert str(batch.pk) == response.json()["batch_id"] and batch.template == "a4-50q-5"
    assert api.get(response.json()["status_url"]).json()["exam_id"] == exam.pk


@pytest.mark.parametrize("fields, words", [
    ({"exam": "999999"}, "exam: no exam '999999'"),
    ({"exam": "x"}, "exam: no exam 'x'"),
    ({"template": "a4-20q-5"}, "is on template a4-50q-5, not a4-20q-5"),
])
def test_upload_for_an_unknown_exam_or_another_template_is_400(api, owner, fields, words):
    from batches.models import Batch

    exam = make_exam(owner, template="a4-50q-5")
    body = {"file": ContentFile(b"\xff\xd8\xff scan", name="scan.jpg"), "exam": str(exam.pk), **fields}
    response = api.post(reverse("batches:api-upload"), body)
    assert response.status_code == 400 and words in response.json()["error"]
    assert Batch.objects.count() == 0


def test_upload_for_another_users_exam_is_refused(api, colleague):
    exam = make_exam(colleague)
    response = api.post(reverse("batches:api-upload"),
                        {"file": ContentFile(b"\xff\xd8\xff scan", name="scan.jpg"), "exam": str(exam.pk)})
    assert response.status_code == 400 and exam.batches.count() == 0


def test_tus_metadata_takes_exam(api, owner):
    exam = make_exam(owner)
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                    for k, v in {"filename": "scans.zip", "exam": str(exam.pk)}.items())
    response = api.generic("POST", reverse("batches:tus-uploads"), b"",
                           headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100", "Upload-Metadata": meta})
    assert response.status_code == 201, response.content
    batch = exam.batches.get()
    assert str(batch.pk) == response.json()["batch_id"] and batch.template == exam.template


def test_batch_scores_endpoint_gives_the_sheets_summary_and_report(api, owner, colleague_api):
    exam = make_exam(owner)
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "7")), reading(answers(KEY_B, "B", "8",
                                                                                       blank=("q5",)))])
    body = api.get(f"/api/batches/{batch.pk}/scores").json()
    assert body["exam_id"] == exam.pk
    assert [(s["student"], s["score"]) for s in body["sheets"]] == [("7", 20), ("8", 19)]
    assert body["summary"]["sheets"] == 2 and body["summary"]["mean"] == 19.5
    assert [u["student"] for u in body["report"]["unknown_students"]] == ["7", "8"]
    assert colleague_api.get(f"/api/batches/{batch.pk}/scores").status_code == 404


# ---------------------------------------------------------------- evaluation.json


def test_post_with_an_omrchecker_evaluation_takes_its_key_and_marking(api):
    evaluation = json.loads((DATA / "sample4" / "evaluation.json").read_text())
    response = post(api, {"name": "Sample 4", "template": TEMPLATE, "evaluation": evaluation})
    assert response.status_code == 201, response.content
    got = api.get(response.json()["url"]).json()
    assert got["keys"]["A"]["q1"] == "B" and "q7" not in got["keys"]["A"]
    assert got["accepted"] == {"q7": ["B", "C", "BC"]}
    assert got["wrong"] == -1 and got["points"]["q1"] == 3 and got["max_score"] == 33


def test_evaluation_endpoint_with_a_csv_key_rescores_the_exam(api, owner):
    folder = DATA / "community" / "UmarFarootAPS"
    exam = make_exam(owner, template="a4-200q-4", keys={"A": {"q1": "A"}})
    add_batch(owner, exam, [reading({"exam_version": "A", "q1": "C", "q2": "C"}, template="a4-200q-4")])
    assert SheetScore.objects.get().score == 0
    body = {"evaluation": json.loads((folder / "evaluation.json").read_text()),
            "answer_key_csv": (folder / "answer_key.csv").read_text()}
    response = post(api, body, f"{EXAMS}/{exam.pk}/evaluation")
    assert response.status_code == 200, response.content
    assert response.json()["rescored"] == 1 and response.json()["max_score"] == 201
    assert any("'E' is not an answer to q3" in n for n in response.json()["notes"])
    # q1's key is C in the CSV: the sheet now earns its point
    score = SheetScore.objects.get()
    assert score.earned[0] == 1 and score.score == sum(score.earned)
    assert ExamChange.objects.filter(exam=exam).count() == 1


def test_an_evaluation_that_cannot_be_imported_is_400_by_path(api, owner):
    exam = make_exam(owner)
    bad = {"source_type": "local", "options": {}, "marking_schemes": {}}
    response = post(api, {"evaluation": bad}, f"{EXAMS}/{exam.pk}/evaluation")
    assert response.status_code == 400 and "evaluation.source_type" in response.json()["error"]
    csv_needed = json.loads((DATA / "community" / "UmarFarootAPS" / "evaluation.json").read_text())
    exam200 = make_exam(owner, template="a4-200q-4", keys={"A": {"q1": "A"}})
    response = post(api, {"evaluation": csv_needed}, f"{EXAMS}/{exam200.pk}/evaluation")
    assert response.status_code == 400 and "answer_key_csv" in response.json()["error"]
