"""Sheets of a batch scored for its exam: matched to the roster by QR code,
else by the student-number grid, scored by version; the batch report (unknown
students, students with two sheets, roster students with no sheet, missing
pages, sheets not scored); a correction re-scoring its sheet with the audit
log and the statistics following at once; the downloads (results.csv,
workbook, items.json against the pure core's numbers)."""

from __future__ import annotations

import csv
import io
import math

import pytest
from django.core.files.storage import default_storage

from batches.exams import exports, report, roster, scores, services
from batches.exams.models import Exam, SheetScore
from batches.models import Correction, Sheet
from batches.review import actions as review
from batches.scoring.items import ItemStatistics
from batches.scoring.rules import parse_exam_rules
from batches.scoring.scoring import compile_rules, score_sheets
from tests.exam_helpers import KEY_A, KEY_B, TWO_PAGES, add_batch, answers, make_exam, reading

pytestmark = pytest.mark.django_db


def score_of(student):
    return SheetScore.objects.get(student=student)


# ---------------------------------------------------------------- matching and versions


def test_the_qr_code_wins_over_the_grid_and_the_grid_serves_without_qr(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "S1,Ada\n2002,Alan\n")
    batch = add_batch(owner, exam, [
        # A QR code naming S1, a grid that was filled in wrongly
        reading(answers(KEY_A, "A", "9999"), qr_exam=str(exam.pk), qr_student="S1"),
        # No QR code: the grid says 2002
        reading(answers(KEY_A, "A", "2002"), qr=False),
        # A QR code without a student (a blank sheet for walk-ins): the grid
        reading(answers(KEY_B, "B", "2002", wrong=("q3",)), qr_exam=str(exam.pk)),
    ])
    rows = list(SheetScore.objects.filter(batch=batch).order_by("sheet__index"))
    assert [(r.student, r.roster_entry.name) for r in rows] == [("S1", "Ada"), ("2002", "Alan"), ("2002", "Alan")]
    assert [r.score for r in rows] == [20, 20, 19]


def test_each_sheet_is_scored_with_its_versions_key(owner):
    exam = make_exam(owner)
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "1")), reading(answers(KEY_A, "B", "2"))])
    # Version A's answers on a version B sheet: every question wrong (the keys differ everywhere)
    assert (score_of("1").score, score_of("2").score) == (20, 0)
    assert score_of("2").right == [False] * 20 and score_of("1").earned == [1.0] * 20


def test_sheets_that_cannot_be_scored_say_why(owner):
    exam = make_exam(owner)
    add_batch(owner, exam, [
        reading(answers(KEY_A, "", "1")),                                   # version left blank, two keys
        reading(answers(KEY_A, "C", "2")),                                  # a version with no key
        reading(answers(KEY_A, "A", "3"), qr_exam="999"),                   # another exam's sheet
        reading({**answers(KEY_A, "A", "4"), "q5": "Z"}),                   # not an option (typed in)
        reading(answers(KEY_A, "A", "5")),
        None,                                                               # a page that failed
    ])
    problems = dict(SheetScore.objects.values_list("student", "problem"))
    assert problems == {"1": "no_key", "2": "no_key", "3": "other_exam", "4": "bad_answer", "5": ""}
    assert SheetScore.objects.filter(score__isnull=True).count() == 4
    assert services.compiled(exam) and scores.exam_statistics(exam).sheets == 1


def test_an_exam_with_one_key_scores_a_sheet_whose_version_was_left_blank(owner):
    exam = make_exam(owner, keys={"A": KEY_A})
    add_batch(owner, exam, [reading(answers(KEY_A, "", "1"))])
    assert score_of("1").score == 20 and score_of("1").problem == ""


# ---------------------------------------------------------------- the batch report


def test_the_batch_report_names_every_case_with_the_sheets_link(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "1001,Ada,1A\n1002,Alan,1A\n1003,Grace,1B\n1004,Edsger,1B\n")
    batch = add_batch(owner, exam, [
        reading(answers(KEY_A, "A", "1001")),
        reading(answers(KEY_A, "A", "1002")),
        reading(answers(KEY_A, "A", "1002", wrong=("q1",))),  # Alan's second sheet
        reading(answers(KEY_A, "A", "7777")),                  # not on the roster
        reading(answers(KEY_A, "A", "")),                      # no student at all
    ])
    got = report.batch_report(batch)
    sheets = {s.index: s.pk for s in Sheet.objects.filter(batch=batch)}
    assert [(u["student"], u["sheet"]) for u in got["unknown_students"]] == [("7777", 4), ("", 5)]
    assert got["unknown_students"][0]["sheet_url"] == f"/admin/batches/sheet/{sheets[4]}/change/"
    assert [(d["student"], d["name"], [s["sheet"] for s in d["sheets"]]) for d in got["duplicates"]] == [
        ("1002", "Alan", [2, 3])]
    assert [a["student_number"] for a in got["absent"]] == ["1003", "1004"]
    assert got["missing_pages"] == [] and got["not_scored"] == []


def test_a_student_in_two_batches_is_a_duplicate_and_present(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "1001,Ada\n1002,Alan\n")
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "1001"))])
    second = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1001"))])
    got = report.batch_report(second)
    assert [d["student"] for d in got["duplicates"]] == ["1001"]
    assert len(got["duplicates"][0]["sheets"]) == 2
    assert [a["student_number"] for a in got["absent"]] == ["1002"]
    assert report.exam_report(exam)["sheets"] == 2


def test_pages_of_a_two_page_sheet_are_gathered_and_missing_ones_reported(owner):
    key = {f"q{i}": "ABCDE"[i % 5] for i in range(1, 201)}
    exam = make_exam(owner, template=TWO_PAGES, keys={"A": key})
    first = {q: a for q, a in key.items() if int(q[1:]) <= 100}
    second = {q: a for q, a in key.items() if int(q[1:]) > 100}
    batch = add_batch(owner, exam, [
        reading({"student_number": "1", "exam_version": "A", **first}, template=TWO_PAGES, page=1, pages=2,
                qr_student="1"),
        reading({"student_number": "2", "exam_version": "A", **first}, template=TWO_PAGES, page=1, pages=2,
                qr_student="2"),
        reading({"student_number": "1", "exam_version": "A", **second}, template=TWO_PAGES, page=2, pages=2,
                qr_student="1"),
    ])
    # Student 1's two pages make one sheet scoring everything; student 2 has page 1 only
    assert score_of("1").score == 200 and len(score_of("1").pages) == 2
    assert score_of("2").score == 100
    got = report.batch_report(batch)
    assert [(m["student"], m["pages_found"], m["pages_missing"]) for m in got["missing_pages"]] == [("2", [1], [2])]
    assert got["missing_pages"][0]["sheet"] == 2


# ---------------------------------------------------------------- corrections


def recount(exam) -> ItemStatistics:
    exam.refresh_from_db()
    return scores.statistics_of(exam)


def assert_saved_statistics_equal_a_recount(exam):
    exam.refresh_from_db()
    shape = services.compiled(exam)
    saved = ItemStatistics.from_dict(shape.tables, exam.statistics).to_dict()
    fresh = recount(exam).to_dict()
    for name in ("sheets", "right", "chosen", "cross", "total", "total_sq", "histogram"):
        assert saved[name] == fresh[name], name
    assert math.isclose(saved["score_sum"], fresh["score_sum"]) and math.isclose(saved["score_sq"], fresh["score_sq"])


def test_a_correction_is_logged_rescored_and_the_statistics_follow(owner, django_capture_on_commit_callbacks):
    exam = make_exam(owner)
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1", wrong=("q1", "q2"))),
                                    reading(answers(KEY_B, "B", "2", blank=("q3",)))])
    assert score_of("1").score == 18
    before = services.exam_json(exam)["sheets_scored"]
    sheet = Sheet.objects.get(batch=batch, index=1)
    row_id = score_of("1").pk

    # When a reviewer corrects q1 to the right answer and q2 to a double mark typed in any order
    with django_capture_on_commit_callbacks(execute=True):
        made = review.apply_corrections(sheet, owner, {"q1": "A", "q2": "cb"})

    # Then the change is in the audit log, the score follows, and the statistics equal a full recount
    assert [(c.field, c.old_value, c.new_value, c.user) for c in sorted(made, key=lambda c: c.field)] == [
        ("q1", "B", "A", owner), ("q2", "C", "BC", owner)]
    assert Correction.objects.filter(sheet=sheet).count() == 2
    assert score_of("1").score == 19 and score_of("1").answers["q2"] == "BC"
    assert score_of("1").pk == row_id  # updated in place
    assert_saved_statistics_equal_a_recount(exam)
    items = exports.items_json(exam)
    assert items["items"]["q1"]["difficulty"] == 1.0  # both sheets right on q1 now
    assert items["items"]["q2"]["difficulty"] == 0.5
    assert items["items"]["q2"]["options"]["multiple"] == 1
    assert services.exam_json(exam)["sheets_scored"] == before
    # And the exam's results CSV says what was corrected
    rows = list(csv.DictReader(io.StringIO(exports.results_csv_text(exam))))
    assert rows[0]["q1"] == "A" and rows[0]["q2"] == "BC" and rows[0]["score"] == "19.0"


def test_a_corrected_student_number_moves_the_sheet_to_the_roster_student(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "1001,Ada\n")
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1091"), qr=False)])
    assert report.batch_report(batch)["unknown_students"][0]["student"] == "1091"
    review.apply_corrections(Sheet.objects.get(batch=batch), owner, {"student_number": "1001"})
    row = SheetScore.objects.get(batch=batch)
    assert row.student == "1001" and row.roster_entry.name == "Ada"
    assert report.batch_report(batch)["unknown_students"] == [] and report.batch_report(batch)["absent"] == []


def test_a_corrected_version_rescores_with_the_other_key(owner):
    exam = make_exam(owner)
    batch = add_batch(owner, exam, [reading(answers(KEY_B, "A", "1"))])
    assert score_of("1").score == 0
    review.apply_corrections(Sheet.objects.get(batch=batch), owner, {"exam_version": "B"})
    assert score_of("1").score == 20 and score_of("1").version == "B"
    assert_saved_statistics_equal_a_recount(exam)


def test_a_correction_on_the_second_page_rescores_the_whole_sheet(owner):
    key = {f"q{i}": "A" for i in range(1, 201)}
    exam = make_exam(owner, template=TWO_PAGES, keys={"A": key})
    first = {f"q{i}": "A" for i in range(1, 101)}
    second = {f"q{i}": "B" for i in range(101, 201)}
    batch = add_batch(owner, exam, [
        reading({"student_number": "1", "exam_version": "A", **first}, template=TWO_PAGES, page=1, pages=2,
                qr_student="1"),
        reading({"student_number": "1", "exam_version": "A", **second}, template=TWO_PAGES, page=2, pages=2,
                qr_student="1"),
    ])
    assert score_of("1").score == 100
    review.apply_corrections(Sheet.objects.get(batch=batch, index=2), owner, {"q150": "A"})
    assert SheetScore.objects.count() == 1 and score_of("1").score == 101
    assert_saved_statistics_equal_a_recount(exam)


def test_a_batch_deleted_takes_its_sheets_out_of_the_statistics(owner):
    exam = make_exam(owner)
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "1"))])
    gone = add_batch(owner, exam, [reading(answers(KEY_A, "A", "2", wrong=("q1",)))])
    assert scores.exam_statistics(exam).sheets == 2
    gone.delete()
    exam.refresh_from_db()
    assert scores.exam_statistics(exam).sheets == 1
    assert exports.summary_json(exam)["mean"] == 20


def test_the_scores_of_a_batch_scored_again_replace_the_earlier_ones(owner):
    exam = make_exam(owner)
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1"))])
    scores.score_batch(batch)
    scores.score_batch(batch)
    assert SheetScore.objects.count() == 1 and scores.exam_statistics(exam).sheets == 1


def test_scoring_that_fails_never_fails_the_batch(owner, monkeypatch):
    exam = make_exam(owner)
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1"))], score=False)

    def broken(batch):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(scores, "score_batch", broken)
    scores.score_finished_batch(batch)
    batch.refresh_from_db()
    assert "could not be scored" in batch.notes[-1]


# ---------------------------------------------------------------- downloads


def make_results(owner):
    exam = make_exam(owner, points={"q1": 2}, wrong=-0.25, multiple=-0.5)
    roster.import_roster_csv(exam, "1001,=HYPERLINK(\"http://x\"),1A\n1002,Alan,1B\n")
    batch = add_batch(owner, exam, [
        reading(answers(KEY_A, "A", "1001", wrong=("q2",), multiple={"q3": "BD"})),
        reading(answers(KEY_B, "B", "1002", blank=("q1", "q4"))),
        reading(answers(KEY_A, "A", "")),
    ], names=["a.jpg", "=cmd|' /C calc'!A0.jpg", "c.jpg"])
    return exam, batch


def test_results_csv_has_the_fixed_columns_and_the_answers_as_read(api, owner):
    exam, _batch = make_results(owner)
    response = api.get(f"/api/exams/{exam.pk}/results.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert rows[0] == ["source_file", "student", "version", "score", "max_score"] + [f"q{i}" for i in range(1, 21)]
    # q1 2 points, q2 wrong -0.25, q3 "BD" multiple -0.5, the rest right
    assert rows[1][:5] == ["a.jpg", "1001", "A", str(2 + 17 - 0.25 - 0.5), "21.0"]
    assert rows[1][5:9] == ["A", "C", "BD", "D"]
    # A formula-looking file name is neutralised; blanks stay empty
    assert rows[2][0].startswith("'=cmd")
    assert rows[2][2:5] == ["B", "18.0", "21.0"] and rows[2][5] == "" and rows[2][8] == ""
    assert rows[3][1] == "" and rows[3][3] == "21.0"


def test_the_workbook_holds_numbers_and_never_a_formula(api, owner):
    from openpyxl import load_workbook

    exam, batch = make_results(owner)
    response = api.get(f"/api/exams/{exam.pk}/results.xlsx")
    assert response.status_code == 200
    book = load_workbook(io.BytesIO(response.content))
    assert book.sheetnames == ["Results", "Items", "Summary"]
    results = [[c.value for c in row] for row in book["Results"].iter_rows()]
    header = results[0]
    assert header[:5] == ["source_file", "student", "version", "score", "max_score"]
    assert header[-3:] == ["name", "group", "problem"]
    assert results[1][3] == 18.25 and isinstance(results[1][3], float) and results[1][4] == 21
    assert results[1][-3] == '=HYPERLINK("http://x")'
    for row in book["Results"].iter_rows():
        for cell in row:
            assert cell.data_type != "f", cell.coordinate
    assert results[2][0] == "=cmd|' /C calc'!A0.jpg"
    items = [[c.value for c in row] for row in book["Items"].iter_rows()]
    assert items[0][:3] == ["question", "difficulty", "discrimination"] and len(items) == 21
    summary = {row[0].value: row[1].value for row in book["Summary"].iter_rows() if row[0].value}
    assert summary["sheets"] == 3 and summary["max_score"] == 21
    # One batch only
    one = load_workbook(io.BytesIO(api.get(f"/api/exams/{exam.pk}/results.xlsx?batch={batch.pk}").content))
    assert one["Results"].max_row == 4


def test_items_json_equals_the_pure_cores_numbers(api, owner):
    exam, batch = make_results(owner)
    got = api.get(f"/api/exams/{exam.pk}/items.json").json()
    template_questions = {f"q{i}": tuple("ABCD") for i in range(1, 21)}
    rules = parse_exam_rules(Exam.objects.get(pk=exam.pk).rules, questions=template_questions,
                             versions=("A", "B", "C", "D"))
    tables = compile_rules(rules)
    sheets = [answers(KEY_A, "A", "1001", wrong=("q2",), multiple={"q3": "BD"}),
              answers(KEY_B, "B", "1002", blank=("q1", "q4")), answers(KEY_A, "A", "")]
    expected = ItemStatistics.of(tables, score_sheets(tables, sheets, [s["exam_version"] for s in sheets])).items()
    assert got == expected
    assert got["students"] == 3 and got["items"]["q3"]["options"]["multiple"] == 1
    # The batch's own figures are the same here (one batch), and its CSV of items names every question
    assert api.get(f"/api/exams/{exam.pk}/items.json?batch={batch.pk}").json() == expected
    text = api.get(f"/api/exams/{exam.pk}/items.csv").content.decode("utf-8-sig")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["question", "difficulty", "discrimination", "A", "B", "C", "D", "blank", "multiple",
                        "miskey_hint"]
    assert [line[0] for line in lines[1:]] == [f"q{i}" for i in range(1, 21)]


def test_a_batch_of_another_exam_is_not_a_filter_of_this_one(api, owner):
    exam, _batch = make_results(owner)
    other = make_exam(owner, name="Other")
    foreign = add_batch(owner, other, [reading(answers(KEY_A, "A", "1"))])
    assert api.get(f"/api/exams/{exam.pk}/results.csv?batch={foreign.pk}").status_code == 404


def test_the_batch_csv_stays_as_it_was(owner):
    # The batch's own results CSV (every field, one row per page) is untouched by scoring
    exam, batch = make_results(owner)
    review.regenerate_csv(batch)
    batch.refresh_from_db()
    with default_storage.open(batch.results_csv.name, "rb") as f:
        header = f.read().decode("utf-8-sig").splitlines()[0]
    assert header.startswith("sheet,source_file,source_page")


def test_a_new_key_rescores_and_the_statistics_equal_a_recount(owner):
    # A one-key exam: a sheet of another exam must stay out even though any version scores
    exam = make_exam(owner, keys={"A": KEY_A})
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "1", wrong=("q1",))),
                            reading(answers(KEY_A, "A", "2", blank=("q2",), multiple={"q3": "AC"})),
                            reading(answers(KEY_A, "A", "3"), qr_exam="999")])
    update = services.update_exam(exam, owner, {"name": "Physics 1", "template": exam.template,
                                                "keys": {"A": {**KEY_A, "q1": "B"}}, "blank": -1})
    assert update.rescored == 3 and update.change.user == owner
    # Sheet 2: q1 read A is wrong now, q2 blank costs 1, q3 a multiple mark earns 0
    assert (score_of("1").score, score_of("2").score, score_of("3").score) == (20, 16, None)
    assert score_of("3").problem == "other_exam" and not score_of("3").counted
    assert_saved_statistics_equal_a_recount(exam)
    assert scores.exam_statistics(exam).sheets == 2


def test_a_correction_is_saved_even_when_the_exam_can_no_longer_score(owner):
    exam = make_exam(owner)
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1", wrong=("q1",)))])
    # Rules that no longer check against the template (as after a custom template was edited)
    Exam.objects.filter(pk=exam.pk).update(rules={"keys": {"Z": {"q1": "A"}}})
    services._compiled.cache_clear()
    made = review.apply_corrections(Sheet.objects.get(batch=batch), owner, {"q1": "A"})
    assert [c.new_value for c in made] == ["A"]
    assert score_of("1").score == 19  # left as it was until the exam is fixed
