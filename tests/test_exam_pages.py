"""The exams' browser pages: access (another user's exam is 404), the exam
form (every problem under its field), roster import (bad rows by line), a key
edit re-scoring and saying so, the change log, the results table (sorting,
group filter, htmx partial), the SVG histogram against the counts, the item
table against items.json, the downloads, the batch page's report and the
upload form's exam choice."""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from html.parser import HTMLParser

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from batches.exams import exports, roster
from batches.exams.models import Exam, ExamChange, SheetScore
from batches.models import Batch

from .conftest import sheets_zip
from .exam_helpers import KEY_A, KEY_B, TEMPLATE, add_batch, answers, make_exam, reading

pytestmark = pytest.mark.django_db

KEY_A_TEXT = "".join(KEY_A.values())
KEY_B_TEXT = "".join(KEY_B.values())


class Tags(HTMLParser):
    """Start tags with their attributes, and the text inside elements by id."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.open_ids: list[tuple[str, list[str]]] = []
        self.texts: dict[str, str] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        for _id, parts in self.open_ids:
            parts.append(" ")
        if "id" in attrs and tag not in ("input", "br", "img", "meta", "link"):
            self.open_ids.append((attrs["id"], []))

    def handle_data(self, data):
        for _id, parts in self.open_ids:
            parts.append(data)

    def handle_endtag(self, tag):
        pass  # texts are closed by text_of, which cuts at the next element with an id

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def text_of(html: str, element_id: str) -> str:
    """The text of the element with that id (to its own closing tag), tags
    dropped, entities decoded and spaces squeezed."""
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert match, f"no element #{element_id}"
    tag, depth, pos = match.group(1), 1, match.end()
    for m in re.finditer(rf"<(/?){tag}\b[^>]*>", html[pos:]):
        depth += -1 if m.group(1) else 1
        if depth == 0:
            inner = html[pos:pos + m.start()]
            break
    else:
        raise AssertionError(f"#{element_id} is not closed")
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", inner)).split())


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def exam_form(**changes) -> dict:
    data = {"name": "Chemistry 2", "template": TEMPLATE, "key_A": KEY_A_TEXT, "key_B": KEY_B_TEXT, "key_C": "",
            "key_D": "", "points": "", "wrong": "0", "blank": "0", "multiple": "0", "accepted": "", "dropped": ""}
    data.update(changes)
    return data


def scored_class(owner, exam: Exam) -> Batch:
    """Six sheets of the exam: four on the roster (groups G1, G2), one
    unknown student, with different scores."""
    roster.import_roster_csv(exam, "number,name,group\n1001,Ada,G1\n1002,Ben,G2\n1003,Cy,G1\n1004,Dee,G2\n"
                                   "1005,Eli,G1\n")
    sheets = [
        answers(KEY_A, "A", "1001"),                                         # 20
        answers(KEY_A, "A", "1002", wrong=("q1", "q2", "q3")),                # 17
        answers(KEY_B, "B", "1003", blank=("q4", "q5")),                      # 18
        answers(KEY_A, "A", "1004", wrong=("q1",), multiple={"q9": "AB"}),    # 18
        answers(KEY_B, "B", "9999", wrong=tuple(f"q{i}" for i in range(1, 11))),  # 10, not on the roster
    ]
    return add_batch(owner, exam, [reading(s, qr=False) for s in sheets])


# ---------------------------------------------------------------- access


def test_another_users_exam_is_404_on_every_page(owner, colleague, outsider):
    exam = make_exam(owner)
    batch = scored_class(owner, exam)
    urls = [reverse("batches:exam", args=[exam.pk]), reverse("batches:exam-edit", args=[exam.pk]),
            reverse("batches:exam-results", args=[exam.pk]),
            reverse("batches:exam-results", args=[exam.pk]) + f"?batch={batch.pk}"]
    bob = logged_in(colleague)
    for url in urls:
        assert bob.get(url).status_code == 404, url
    assert bob.post(reverse("batches:exam-edit", args=[exam.pk]), exam_form()).status_code == 404
    assert bob.post(reverse("batches:exam-roster", args=[exam.pk]),
                    {"file": SimpleUploadedFile("r.csv", b"1,A\n")}).status_code == 404
    assert "Physics 1" not in bob.get(reverse("batches:exams")).content.decode()
    # a non-staff user is sent to the login page; the owner sees every page
    eve = logged_in(outsider)
    assert eve.get(urls[0]).status_code == 302
    alice = logged_in(owner)
    for url in urls:
        assert alice.get(url).status_code == 200, url
    # a batch of another exam is not a batch of this one
    other = make_exam(owner, name="Other")
    assert alice.get(reverse("batches:exam-results", args=[other.pk]) + f"?batch={batch.pk}").status_code == 404


# ---------------------------------------------------------------- create and edit


def test_an_exam_is_created_from_the_form(owner):
    client = logged_in(owner)
    assert client.get(reverse("batches:exam-new")).status_code == 200
    response = client.post(reverse("batches:exam-new"), exam_form(
        points="q1=2, q2=0.5", wrong="-0.25", multiple="-0.5", accepted="q3=A/C, q9=BD", dropped="q7 20"))
    exam = Exam.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("batches:exam", args=[exam.pk])
    assert exam.owner == owner and exam.name == "Chemistry 2" and exam.template == TEMPLATE
    rules = exam.rules
    assert rules["keys"] == {"A": KEY_A, "B": KEY_B}
    assert rules["points"]["q1"] == 2 and rules["points"]["q2"] == 0.5 and rules["points"]["q4"] == 1
    assert (rules["wrong"], rules["blank"], rules["multiple"]) == (-0.25, 0, -0.5)
    assert rules["accepted"] == {"q3": ["A", "C"], "q9": ["BD"]}
    assert sorted(rules["dropped"]) == ["q20", "q7"]
    page = client.get(response["Location"]).content.decode()
    assert "ABCDA BCDAB CDABC DABCD" in page  # the key in fives


def test_a_key_takes_groups_double_marks_in_brackets_and_dots_for_questions_left_out(owner):
    client = logged_in(owner)
    response = client.post(reverse("batches:exam-new"), exam_form(key_A="a(BD).DA BCDAB, C[ac]", key_B=""))
    assert response.status_code == 302
    assert Exam.objects.get().rules["keys"] == {"A": {"q1": "A", "q2": "BD", "q4": "D", "q5": "A", "q6": "B",
                                                      "q7": "C", "q8": "D", "q9": "A", "q10": "B", "q11": "C",
                                                      "q12": "AC"}}
    # and the edit form gives it back as it can be typed again
    html = client.get(reverse("batches:exam-edit", args=[Exam.objects.get().pk])).content.decode()
    assert 'value="A(BD).DA BCDAB C(AC)"' in html


@pytest.mark.parametrize("changes, field, words", [
    ({"name": ""}, "name", "This field is required"),
    ({"key_A": "AZCD"}, "key_A", "q2: 'Z' is not an answer to q2 (options A, B, C, D)"),
    ({"key_A": "A" * 25}, "key_A", "25 answers, but the template has 20 questions"),
    ({"key_A": "AB(CD"}, "key_A", "the “(” after answer 2 is not closed"),
    ({"key_B": "ABC"}, "key_B", "no key for q4–q20: a question in the exam needs a key on every version"),
    ({"key_B": "ABCD.B..D.ABCDABCDA"}, "key_B", "no key for q5, q7, q8, q10, q20: a question in the exam"),
    ({"key_A": "", "key_B": ""}, "key_A", "Type the key of at least one version"),
    ({"points": "q1=two"}, "points", "q1: “two” is not a number"),
    ({"points": "q1"}, "points", "should be a question, “=” and points"),
    ({"points": "q1=0"}, "points", "q1: must be a number more than 0"),
    ({"points": "q99=2"}, "points", "q99"),
    ({"wrong": "a lot"}, "wrong", "Enter a number"),
    ({"accepted": "q4=X"}, "accepted", "'X' is not an answer to q4"),
    ({"dropped": "q77"}, "dropped", "q77"),
    ({"template": "no-such-template"}, "template", "Select a valid choice"),
])
def test_every_problem_is_shown_under_its_field(owner, changes, field, words):
    client = logged_in(owner)
    response = client.post(reverse("batches:exam-new"), exam_form(**changes))
    assert response.status_code == 422
    assert not Exam.objects.exists()
    html = response.content.decode()
    assert words in text_of(html, f"{field}-errors"), text_of(html, f"{field}-errors")
    assert 'aria-invalid="true"' in html and "The exam was not saved" in html
    # what was typed is kept
    for name, value in changes.items():
        if value and name != "template":
            assert f'value="{value}"' in html.replace("&quot;", '"'), name


def test_several_problems_are_shown_at_once_each_under_its_field(owner):
    response = logged_in(owner).post(reverse("batches:exam-new"),
                                     exam_form(name="", key_A="AZ", points="q1=x"))
    html = response.content.decode()
    assert "required" in text_of(html, "name-errors")
    assert "'Z' is not an answer" in text_of(html, "key_A-errors")
    assert "not a number" in text_of(html, "points-errors")


def test_an_evaluation_json_creates_the_exam(owner):
    evaluation = (b'{"source_type": "custom", "options": {"questions_in_order": ["q1..4"], '
                  b'"answers_in_order": ["A", "B", "C", "D"]}, "marking_schemes": {"DEFAULT": '
                  b'{"correct": "3", "incorrect": "-1", "unmarked": "0"}}}')
    client = logged_in(owner)
    response = client.post(reverse("batches:exam-new"), {**exam_form(key_A="", key_B=""),
                                                         "evaluation": SimpleUploadedFile("evaluation.json", evaluation)})
    assert response.status_code == 302, response.content.decode()[:2000]
    rules = Exam.objects.get().rules
    assert rules["keys"] == {"A": {"q1": "A", "q2": "B", "q3": "C", "q4": "D"}}
    assert rules["points"] == {"q1": 3, "q2": 3, "q3": 3, "q4": 3} and rules["wrong"] == -1


def test_a_bad_evaluation_json_is_shown_under_its_field(owner):
    client = logged_in(owner)
    response = client.post(reverse("batches:exam-new"), {
        **exam_form(), "evaluation": SimpleUploadedFile("evaluation.json", b"{not json")})
    assert response.status_code == 422 and "is not a JSON file" in text_of(response.content.decode(),
                                                                              "evaluation-errors")
    response = client.post(reverse("batches:exam-new"), {
        **exam_form(), "evaluation": SimpleUploadedFile("evaluation.json", b'{"source_type": "local"}')})
    assert response.status_code == 422 and "marking_schemes: is required" in text_of(response.content.decode(),
                                                                                        "evaluation-errors")
    assert not Exam.objects.exists()


def test_choosing_another_template_gives_its_key_fields(owner):
    client = logged_in(owner)
    html = client.get(reverse("batches:exam-new"), {"template": TEMPLATE, "name": "Kept", "key_A": "ABC"},
                      headers={"HX-Request": "true"}).content.decode()
    assert 'id="key-fields"' in html and 'name="key_D"' in html
    assert 'value="Kept"' in html and 'value="ABC"' in html
    assert "20 questions" in html


def test_the_edit_form_shows_the_exam_as_stored(owner):
    exam = make_exam(owner, points={"q1": 2}, wrong=-0.25, accepted={"q3": ["A", "C"]}, dropped=["q7"])
    html = logged_in(owner).get(reverse("batches:exam-edit", args=[exam.pk])).content.decode()
    assert 'value="ABCDA BCDAB CDABC DABCD"' in html and 'value="DCBAD CBADC BADCB ADCBA"' in html
    assert 'value="q1=2"' in html and 'value="-0.25"' in html and 'value="q3=A/C"' in html
    assert 'value="q7"' in html


def test_editing_the_key_rescores_and_the_page_says_how_many(owner):
    # Given an exam with five sheets scored
    exam = make_exam(owner)
    batch = scored_class(owner, exam)
    before = dict(SheetScore.objects.filter(batch=batch).values_list("student", "score"))
    assert before["1001"] == 20
    client = logged_in(owner)

    # When version A's key changes at q1 (A -> B) through the form
    new_key = "B" + KEY_A_TEXT[1:]
    response = client.post(reverse("batches:exam-edit", args=[exam.pk]), exam_form(name="Physics 1", key_A=new_key),
                           follow=True)

    # Then every sheet was scored again, and the page says so
    html = response.content.decode()
    assert "Saved. 5 sheets re-scored with the new key and rules." in html
    after = dict(SheetScore.objects.filter(batch=batch).values_list("student", "score"))
    assert after["1001"] == 19 and after["1002"] == 18 and after["1003"] == before["1003"]
    # and the change log says who, what and how many
    change = ExamChange.objects.get()
    assert change.user == owner and change.rescored == 5
    log = text_of(html, "changes")
    assert "alice" in log and "5 sheets re-scored" in log and "Key of version A: q1 A → B" in log


def test_saving_the_same_exam_says_nothing_changed(owner):
    exam = make_exam(owner)
    response = logged_in(owner).post(reverse("batches:exam-edit", args=[exam.pk]),
                                     exam_form(name="Physics 1"), follow=True)
    assert "Nothing changed." in response.content.decode()
    assert not ExamChange.objects.exists()


def test_an_edit_refused_by_the_services_keeps_the_exam(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    response = logged_in(owner).post(reverse("batches:exam-edit", args=[exam.pk]),
                                     exam_form(name="Physics 1", template="a4-20q-5"))
    assert response.status_code == 422
    assert "a4-20q-4 sheets" in text_of(response.content.decode(), "template-errors")
    exam.refresh_from_db()
    assert exam.template == TEMPLATE


# ---------------------------------------------------------------- roster


def test_a_roster_with_bad_rows_is_refused_with_every_line(owner):
    exam = make_exam(owner)
    bad = b"number,name,group\n1001,Ada,G1\n1002,,G2\n,Cy,G1\n1001,Dee,G2\n1005,Eli,G1\n"
    response = logged_in(owner).post(reverse("batches:exam-roster", args=[exam.pk]),
                                     {"file": SimpleUploadedFile("roster.csv", bad)})
    assert response.status_code == 422
    errors = text_of(response.content.decode(), "roster-errors")
    assert "3 problems" in errors
    assert "line 3: no name" in errors and "line 4: no student number" in errors
    assert "line 5: student number 1001 is already on line 2" in errors
    assert exam.roster.count() == 0


def test_a_good_roster_is_imported_and_listed(owner):
    exam = make_exam(owner)
    client = logged_in(owner)
    data = b"1001;Ada Lovelace;G1\n1002;Ben;G2\n"
    response = client.post(reverse("batches:exam-roster", args=[exam.pk]),
                           {"file": SimpleUploadedFile("roster.csv", data)}, follow=True)
    html = response.content.decode()
    assert "Roster imported: 2 added, 0 updated, 0 unchanged." in html
    assert "Ada Lovelace" in text_of(html, "roster-table")
    assert exam.roster.count() == 2


def test_a_roster_import_without_a_file_is_refused(owner):
    exam = make_exam(owner)
    response = logged_in(owner).post(reverse("batches:exam-roster", args=[exam.pk]), {})
    assert response.status_code == 422 and "required" in text_of(response.content.decode(), "file-errors")


# ---------------------------------------------------------------- results


def student_order(html: str) -> list[str]:
    return re.findall(r'<tr data-student="([^"]*)"', html)


def test_results_sort_by_column_and_filter_by_group(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    client = logged_in(owner)
    url = reverse("batches:exam-results", args=[exam.pk])

    assert student_order(client.get(url).content.decode()) == ["1001", "1002", "1003", "1004", "9999"]
    html = client.get(url, {"sort": "score", "order": "desc"}).content.decode()
    assert student_order(html) == ["1001", "1003", "1004", "1002", "9999"]
    assert 'aria-sort="descending" class=" num" data-column="score"' in html
    assert student_order(client.get(url, {"sort": "score"}).content.decode()) == ["9999", "1002", "1003", "1004",
                                                                                  "1001"]
    # rows with no name (not on the roster) come last either way
    assert student_order(client.get(url, {"sort": "name", "order": "desc"}).content.decode())[-1] == "9999"
    # a question sorts right before multiple, wrong and blank
    assert student_order(client.get(url, {"sort": "q1"}).content.decode())[-2:] in (["1002", "1004"],
                                                                                   ["1004", "1002"])
    # the group filter keeps that group's students, and the links keep the filter
    html = client.get(url, {"group": "G1", "sort": "score", "order": "desc"}).content.decode()
    assert student_order(html) == ["1001", "1003"]
    assert "group=G1" in html and "2 sheets in group G1" in html
    # an unknown sort or group falls back to the defaults
    assert len(student_order(client.get(url, {"sort": "nope", "group": "G9"}).content.decode())) == 5


def test_an_htmx_request_gets_only_the_table(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    html = logged_in(owner).get(reverse("batches:exam-results", args=[exam.pk]), {"group": "G2"},
                                headers={"HX-Request": "true"}).content.decode()
    assert html.lstrip().startswith('<div id="results-table"')
    assert "<html" not in html and student_order(html) == ["1002", "1004"]


def test_each_answer_shows_as_colour_and_symbol(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    html = logged_in(owner).get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    row = html[html.index('data-student="1004"'):]
    row = row[:row.index("</tr>")]
    cells = re.findall(r'<td class="r (\w+)" title="[^"]*">([^<]*)</td>', row)
    assert len(cells) == 20
    assert cells[0] == ("wrong", "B") and cells[1] == ("right", "✓") and cells[8] == ("multiple", "AB")
    row = html[html.index('data-student="1003"'):]
    assert re.findall(r'<td class="r (\w+)"[^>]*>([^<]*)</td>', row[:row.index("</tr>")])[3] == ("blank", "–")


def test_a_sheet_still_in_review_is_marked_in_the_results(owner):
    exam = make_exam(owner)
    doubtful = reading(answers(KEY_A, "A", "1001"), qr=False)
    doubtful.update(flags={"q3": ["faint"]}, needs_review=True)
    add_batch(owner, exam, [doubtful, reading(answers(KEY_A, "A", "1002"), qr=False)])
    html = logged_in(owner).get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    rows = {s: html[html.index(f'data-student="{s}"'):] for s in ("1001", "1002")}
    rows = {s: r[:r.index("</tr>")] for s, r in rows.items()}
    assert "⚑ review" in rows["1001"] and "⚑ review" not in rows["1002"]


def test_the_histogram_bars_are_the_counts(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    html = logged_in(owner).get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    bins = exports.summary_json(exam)["histogram"]
    bars = Tags(html).find("rect", **{"class": "bar"})
    assert [int(b["data-count"]) for b in bars] == [b["count"] for b in bins]
    assert sum(int(b["data-count"]) for b in bars) == 5
    tallest = max(float(b["height"]) for b in bars)
    top = max(b["count"] for b in bins)
    for bar in bars:
        assert float(bar["height"]) == pytest.approx(int(bar["data-count"]) / top * tallest, abs=0.02)
    assert ">Score<" in html and ">Sheets<" in html  # axis labels
    assert re.search(r'<text class="count"[^>]*>2</text>', html)  # 18 points: two sheets


def test_the_item_table_is_items_json(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    client = logged_in(owner)
    html = client.get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    items = client.get(reverse("batches:api-exam-items", args=[exam.pk])).json()
    section = html[html.index('id="item-analysis"'):]
    assert items["students"] == 5
    for question, item in items["items"].items():
        row = section[section.index(f'<tr data-question="{question}"'):]
        row = row[:row.index("</tr>")]
        difficulty = re.search(r'class="num difficulty" data-value="([^"]*)"', row).group(1)
        assert float(difficulty) == pytest.approx(item["difficulty"])
        discrimination = re.search(r'discrimination[^"]*" data-value="([^"]*)"', row).group(1)
        if item["discrimination"] is None:
            assert discrimination == ""
        else:
            assert float(discrimination) == pytest.approx(item["discrimination"])
        shown = dict(re.findall(r'data-option="([^"]+)" data-count="(\d+)"', row))
        assert {k: int(v) for k, v in shown.items()} == item["options"]
        # the key of each version is marked
        keyed = re.findall(r'class="option key" data-option="([^"]+)"', row)
        assert set(keyed) == {KEY_A[question], KEY_B[question]}
    assert text_of(html, "kr20") == ("–" if items["kr20"] is None else f"{items['kr20']:.3f}")


def test_a_miskeyed_question_is_pointed_out_with_a_link_to_the_key(owner):
    # Given a key that says D where everyone answered A (q1), and a strong and weak class
    exam = make_exam(owner, keys={"A": {**KEY_A, "q1": "D"}})
    sheets = [answers(KEY_A, "A", f"10{i:02d}", wrong=tuple(f"q{j}" for j in range(2, 2 + i))) for i in range(6)]
    add_batch(owner, exam, [reading(s, qr=False) for s in sheets])
    html = logged_in(owner).get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    hints = text_of(html, "miskeys")
    assert "q1" in hints and "Version A: A was chosen by 6 sheets, more than the 0 that got the question right" in hints
    assert reverse("batches:exam-edit", args=[exam.pk]) + "#key-fields" in html


def test_downloads_are_the_apis_files_for_the_session(owner):
    exam = make_exam(owner)
    batch = scored_class(owner, exam)
    client = logged_in(owner)
    html = client.get(reverse("batches:exam-results", args=[exam.pk]), {"batch": str(batch.pk)}).content.decode()
    tags = Tags(html)
    links = {a["id"]: a["href"] for a in tags.find("a") if a.get("id", "").startswith("download-")}
    assert links["download-results-csv"] == reverse("batches:api-exam-results", args=[exam.pk]) + f"?batch={batch.pk}"
    response = client.get(links["download-results-csv"])
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert rows[0][:5] == ["source_file", "student", "version", "score", "max_score"] and len(rows) == 6
    assert response.content.decode("utf-8-sig") == exports.results_csv_text(exam, batch.pk)
    response = client.get(links["download-xlsx"])
    assert response.status_code == 200 and response.content[:2] == b"PK"
    response = client.get(links["download-items-csv"])
    assert response.status_code == 200 and response.content.decode("utf-8-sig").startswith("question,difficulty")


# ---------------------------------------------------------------- batch page, upload, list


def test_the_batch_page_reports_the_roster_matching_with_links(owner):
    exam = make_exam(owner)
    batch = scored_class(owner, exam)
    html = logged_in(owner).get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert text_of(html, "count-unknown") == "1" and text_of(html, "count-absent") == "1"
    unknown = SheetScore.objects.get(student="9999")
    assert reverse("admin:batches_sheet_change", args=[unknown.sheet_id]) in text_of(html, "report-unknown") or \
        f'href="{reverse("admin:batches_sheet_change", args=[unknown.sheet_id])}"' in html
    assert "1005 Eli" in text_of(html, "report-absent")
    assert reverse("batches:exam-results", args=[exam.pk]) + f"?batch={batch.pk}" in html


def test_the_batch_page_reports_two_sheets_of_one_student(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "1001,Ada\n")
    batch = add_batch(owner, exam, [reading(answers(KEY_A, "A", "1001"), qr=False)] * 2)
    html = logged_in(owner).get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert text_of(html, "count-duplicates") == "1"
    assert "1001 Ada" in text_of(html, "report-duplicates")
    for row in SheetScore.objects.filter(batch=batch):
        assert f'href="{reverse("admin:batches_sheet_change", args=[row.sheet_id])}"' in html


def test_the_upload_form_takes_an_exam_and_its_template(owner, colleague, broker):
    exam = make_exam(owner)
    client = logged_in(owner)
    html = client.get(reverse("batches:upload"), {"exam": exam.pk}).content.decode()
    assert f'<option value="{exam.pk}" data-template="{TEMPLATE}" selected>' in html
    data, _sheets = sheets_zip(1)
    response = client.post(reverse("batches:upload"), {
        "file": SimpleUploadedFile("scans.zip", data), "has_qr": "true", "template": "a4-100q-5",
        "exam": str(exam.pk)})
    assert response.status_code == 302
    batch = Batch.objects.get()
    assert batch.exam == exam and batch.template == TEMPLATE
    # another user's exam is not a choice
    other = make_exam(colleague, name="Bob's")
    response = client.post(reverse("batches:upload"), {
        "file": SimpleUploadedFile("scans.zip", data), "has_qr": "true", "template": TEMPLATE, "exam": str(other.pk)})
    assert response.status_code == 422 and Batch.objects.count() == 1


def test_the_exam_list_shows_the_users_exams(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    html = logged_in(owner).get(reverse("batches:exams")).content.decode()
    row = text_of(html, "exam-list")
    assert "Physics 1" in row and TEMPLATE in row and " 5 5 " in f" {row} "


def test_an_exam_with_no_sheets_yet_has_its_pages(owner):
    exam = make_exam(owner)
    client = logged_in(owner)
    html = client.get(reverse("batches:exam", args=[exam.pk])).content.decode()
    assert "No scans yet." in html and "No change since the exam was created" in html
    html = client.get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    assert text_of(html, "sheets-scored") == "0" and text_of(html, "kr20") == "–"
    assert "No sheet." in html
    assert all(b["data-count"] == "0" for b in Tags(html).find("rect", **{"class": "bar"}))


def test_keys_can_be_typed_question_by_question(owner):
    client = logged_in(owner)
    # switching keeps what was typed on one line, question by question
    html = client.get(reverse("batches:exam-new"), {"template": TEMPLATE, "entry": "questions", "name": "Quiz",
                                                    "key_A": "AB(CD)"}).content.decode()
    assert 'id="key-grid"' in html and 'name="key_A"' not in html
    assert re.search(r'name="key_A__q1"[^>]*value="A"', html) and re.search(r'name="key_A__q3"[^>]*value="CD"', html)
    # a letter that is not an option is shown in its own box
    cells = {f"key_A__q{i}": a for i, a in enumerate(KEY_A.values(), 1)}
    response = client.post(reverse("batches:exam-new"), {**exam_form(key_A="", key_B=""), "entry": "questions",
                                                         **cells, "key_A__q5": "x"})
    assert response.status_code == 422
    assert "'X' is not an answer to q5" in text_of(response.content.decode(), "key_A__q5-errors")
    response = client.post(reverse("batches:exam-new"), {**exam_form(key_A="", key_B=""), "entry": "questions",
                                                         **cells, "key_A__q2": "db"})
    assert response.status_code == 302
    assert Exam.objects.get().rules["keys"] == {"A": {**KEY_A, "q2": "BD"}}
    # and back to one line per version
    html = client.get(reverse("batches:exam-new"), {"template": TEMPLATE, "entry": "compact", **cells}).content.decode()
    assert 'value="ABCDA BCDAB CDABC DABCD"' in html


def test_a_version_with_missing_questions_is_named_when_typed_question_by_question(owner):
    cells = {f"key_A__q{i}": a for i, a in enumerate(KEY_A.values(), 1)}
    response = logged_in(owner).post(reverse("batches:exam-new"), {
        **exam_form(key_A="", key_B=""), "entry": "questions", **cells, "key_B__q1": "D"})
    assert response.status_code == 422
    assert "Version B: no key for q2–q20" in text_of(response.content.decode(), "form-errors")


def test_a_long_results_table_comes_a_page_at_a_time_keeping_sort_and_filter(owner, monkeypatch):
    from batches.exams import results

    monkeypatch.setattr(results, "ROWS_PER_PAGE", 2)
    exam = make_exam(owner)
    scored_class(owner, exam)
    client = logged_in(owner)
    url = reverse("batches:exam-results", args=[exam.pk])

    html = client.get(url, {"sort": "score", "order": "desc"}).content.decode()
    assert student_order(html) == ["1001", "1003"]
    assert text_of(html, "row-count") == "5 sheets; showing 1–2"
    assert text_of(html, "page-number") == "Page 1 of 3"
    pager = Tags(html)
    (next_link,) = pager.find("a", rel="next")
    assert next_link["href"] == "?sort=score&order=desc&page=2" == next_link["hx-get"]
    assert not pager.find("a", rel="prev")
    # every row is on some page, in the one sorted order
    pages = [student_order(client.get(url, {"sort": "score", "order": "desc", "page": n}).content.decode())
             for n in (1, 2, 3)]
    assert pages == [["1001", "1003"], ["1004", "1002"], ["9999"]]
    # a page past the end or not a number shows the nearest page
    assert student_order(client.get(url, {"sort": "score", "order": "desc", "page": 9}).content.decode()) == ["9999"]
    assert student_order(client.get(url, {"page": "x"}).content.decode()) == ["1001", "1002"]
    # every row on one page, to print, in the same order
    html = client.get(url, {"sort": "score", "order": "desc", "page": "all"}).content.decode()
    assert student_order(html) == [s for p in pages for s in p] and 'id="results-pager"' not in html
    (every_row,) = Tags(client.get(url, {"sort": "score", "order": "desc"}).content.decode()).find("a", id="every-row")
    assert every_row["href"] == "?sort=score&order=desc&page=all"
    # the filter's page links keep the group; htmx gets the table with its pager
    monkeypatch.setattr(results, "ROWS_PER_PAGE", 1)
    html = client.get(url, {"group": "G1", "page": 1}, headers={"HX-Request": "true"}).content.decode()
    assert html.lstrip().startswith('<div id="results-table"') and student_order(html) == ["1001"]
    (next_link,) = Tags(html).find("a", rel="next")
    assert "group=G1" in next_link["href"] and "page=2" in next_link["href"]
    # a sort link starts again at page 1
    sort_links = [h["href"] for h in Tags(html).find("a") if "sort=" in h.get("href", "")
                  and h.get("rel") is None and h.get("id") != "every-row"]
    assert len(sort_links) == 6 + 20 and all("page=" not in h for h in sort_links)


def test_a_table_that_fits_one_page_has_no_pager(owner):
    exam = make_exam(owner)
    scored_class(owner, exam)
    html = logged_in(owner).get(reverse("batches:exam-results", args=[exam.pk])).content.decode()
    assert 'id="results-pager"' not in html and text_of(html, "row-count") == "5 sheets"
