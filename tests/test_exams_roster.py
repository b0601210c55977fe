"""Roster import from CSV: with or without a header, the separators
spreadsheets write, every bad row reported by its line and nothing imported
then, duplicates, replacing and updating, and the sheets matched again."""

from __future__ import annotations

import pytest

from batches.exams import roster
from batches.exams.models import RosterEntry, SheetScore
from tests.exam_helpers import KEY_A, add_batch, answers, make_exam, reading

pytestmark = pytest.mark.django_db


def entries(exam):
    return list(RosterEntry.objects.filter(exam=exam).order_by("student_number")
                .values_list("student_number", "name", "group"))


def test_a_header_in_any_order_and_case_is_recognised(owner):
    exam = make_exam(owner)
    data = "Name;Group;Student Number\r\nAda Lovelace;1A;1001\r\nAlan Turing;;1002\r\n".encode("utf-8-sig")
    result = roster.import_roster_csv(exam, data)
    assert result.header and (result.added, result.updated) == (2, 0)
    assert entries(exam) == [("1001", "Ada Lovelace", "1A"), ("1002", "Alan Turing", "")]


def test_without_a_header_the_columns_are_number_name_group(owner):
    exam = make_exam(owner)
    result = roster.import_roster_csv(exam, "1001,Ada Lovelace,1A\n\n1002,\"Turing, Alan\"\n")
    assert not result.header and result.added == 2
    assert entries(exam) == [("1001", "Ada Lovelace", "1A"), ("1002", "Turing, Alan", "")]


def test_tabs_and_windows_1252_are_read(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "student_number\tname\n2001\tJos\xe9 Mar\xeda\n".encode("cp1252"))
    assert entries(exam) == [("2001", "José María", "")]


def test_every_bad_row_is_reported_by_line_and_nothing_is_imported(owner):
    exam = make_exam(owner)
    data = ("student_number,name,group\n"
            "1001,Ada,1A\n"        # line 2: fine
            ",Nobody,1A\n"         # line 3: no number
            "1003,,1B\n"           # line 4: no name
            "1001,Ada again,1A\n"  # line 5: number twice
            "10 04,Spaced,1A\n"    # line 6: a space in the number
            "1005,Fine,1B\n")      # line 7: fine
    with pytest.raises(roster.RosterError) as caught:
        roster.import_roster_csv(exam, data)
    assert caught.value.errors == [
        "line 3: no student number",
        "line 4: no name",
        "line 5: student number 1001 is already on line 2",
        "line 6: the student number '10 04' contains a space",
    ]
    assert entries(exam) == []


def test_too_many_cells_without_a_header_is_a_bad_row(owner):
    exam = make_exam(owner)
    with pytest.raises(roster.RosterError) as caught:
        roster.import_roster_csv(exam, "1001,Ada,1A\n1002,Alan,1B,extra\n")
    assert caught.value.errors == ["line 2: 4 cells; expected student number, name and an optional group"]


def test_an_empty_file_or_one_that_is_not_text_is_refused(owner):
    exam = make_exam(owner)
    with pytest.raises(roster.RosterError, match="no students"):
        roster.import_roster_csv(exam, "student_number,name\n\n")
    with pytest.raises(roster.RosterError, match="no students"):
        roster.import_roster_csv(exam, b"")


def test_import_again_updates_names_and_groups_and_replace_empties_first(owner):
    exam = make_exam(owner)
    roster.import_roster_csv(exam, "1001,Ada,1A\n1002,Alan,1B\n")
    result = roster.import_roster_csv(exam, "1002,Alan Turing,1B\n1003,Grace,1C\n")
    assert (result.added, result.updated, result.unchanged) == (1, 1, 0)
    assert [e[0] for e in entries(exam)] == ["1001", "1002", "1003"]
    roster.import_roster_csv(exam, "1003,Grace,1C\n", replace=True)
    assert entries(exam) == [("1003", "Grace", "1C")]


def test_sheets_scored_before_the_roster_are_matched_by_the_import(owner):
    exam = make_exam(owner)
    add_batch(owner, exam, [reading(answers(KEY_A, "A", "1001")), reading(answers(KEY_A, "A", "1002"))])
    assert not SheetScore.objects.filter(roster_entry__isnull=False).exists()
    result = roster.import_roster_csv(exam, "1001,Ada\n")
    assert result.rematched == 1
    assert SheetScore.objects.get(student="1001").roster_entry.name == "Ada"
    roster.import_roster_csv(exam, "1002,Alan\n", replace=True)
    assert SheetScore.objects.get(student="1001").roster_entry is None
    assert SheetScore.objects.get(student="1002").roster_entry.name == "Alan"


def test_the_api_imports_a_body_or_a_file_and_reports_bad_rows_by_line(api, owner):
    from django.core.files.base import ContentFile

    exam = make_exam(owner)
    url = f"/api/exams/{exam.pk}/roster"
    response = api.post(url, b"1001,Ada,1A\n1002,,1B\n", content_type="text/csv")
    assert response.status_code == 400
    assert response.json()["errors"] == ["line 2: no name"] and "line 2: no name" in response.json()["error"]
    response = api.post(url, {"file": ContentFile(b"number,name\n1001,Ada\n1002,Alan\n", name="roster.csv")})
    assert response.status_code == 200 and response.json()["added"] == 2 and response.json()["header"]
    response = api.post(url + "?replace=true", b"1003,Grace\n", content_type="text/csv")
    assert response.json()["roster"] == 1
    assert api.get(url).json()["roster"] == [{"student_number": "1003", "name": "Grace", "group": ""}]
