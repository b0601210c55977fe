"""Reading and checking an exam's key and rules from the API's JSON."""

import math

import pytest

from batches.scoring.rules import ExamRulesError, Marking, canonical_answer, parse_exam_rules

QUESTIONS = {f"q{i}": tuple("ABCDE") for i in range(1, 11)}
VERSIONS = ["A", "B", "C", "D"]


def parse(data, questions=QUESTIONS, versions=VERSIONS):
    return parse_exam_rules(data, questions=questions, versions=versions)


def errors_of(data, **kwargs):
    with pytest.raises(ExamRulesError) as caught:
        parse(data, **kwargs)
    return caught.value.errors


def test_the_issue_example_reads_with_its_defaults():
    rules = parse({
        "keys": {"A": {f"q{i}": "B" for i in range(1, 10)}, "B": {f"q{i}": "C" for i in range(1, 10)}},
        "points": {"q1": 2, "q2": 0.5}, "wrong": -0.25, "blank": 0, "multiple": 0,
        "accepted": {"q3": ["A", "C"], "q9": ["BD"]}, "dropped": ["q7"],
    })
    assert list(rules.questions) == [f"q{i}" for i in range(1, 10)]  # q10 has no key: not in the exam
    assert rules.points["q1"] == 2 and rules.points["q2"] == 0.5 and rules.points["q3"] == 1
    assert rules.max_score == 2 + 0.5 + 7
    assert rules.marking == Marking(wrong=-0.25, blank=0, multiple=0)
    assert rules.accepted == {"q3": ("A", "C"), "q9": ("BD",)}
    assert rules.dropped == ("q7",)
    assert rules.versions == ("A", "B") and not rules.one_key_for_all


def test_amounts_default_to_zero_and_points_to_one():
    rules = parse({"keys": {"A": {"q1": "A", "q2": "B"}}})
    assert rules.marking == Marking(0, 0, 0)
    assert rules.points == {"q1": 1.0, "q2": 1.0}
    assert rules.max_score == 2


def test_null_fields_take_their_defaults():
    rules = parse({"keys": {"A": {"q1": "A"}}, "points": None, "wrong": None, "accepted": None, "dropped": None,
                   "marking": None, "credit": None})
    assert rules == parse({"keys": {"A": {"q1": "A"}}})


def test_max_score_counts_dropped_questions():
    rules = parse({"keys": {"A": {"q1": "A"}}, "dropped": ["q2"], "points": {"q2": 3}})
    assert rules.max_score == 4


def test_answers_are_written_as_read():
    assert canonical_answer("DB", "ABCDE") == "BD"
    assert canonical_answer("BB", "ABCDE") is None
    assert canonical_answer("F", "ABCDE") is None
    assert canonical_answer("NoYes", ("Yes", "No")) is None
    assert canonical_answer("YesNo", ("Yes", "No")) == "YesNo"
    rules = parse({"keys": {"A": {"q1": "DB"}}, "accepted": {"q2": ["EA"]}})
    assert rules.keys["A"]["q1"] == "BD" and rules.accepted["q2"] == ("AE",)


def test_unknown_version_and_question_are_refused_by_name():
    errors = errors_of({"keys": {"E": {"q1": "B"}, "A": {"q99": "B", "q2": "Z"}}})
    assert "keys.E: unknown version 'E' (the sheet's versions are A, B, C, D)" in errors
    assert "keys.A.q99: unknown question 'q99'" in errors
    assert "keys.A.q2: 'Z' is not an answer to q2 (options A, B, C, D, E)" in errors


def test_every_problem_is_reported_at_once_by_path():
    errors = errors_of({
        "keys": {"A": {"q1": "A", "q2": ""}}, "points": {"q1": 0, "q3": 2, "q55": 1}, "wrong": "-1",
        "accepted": {"q1": "A", "q4": ["A", "X"]}, "dropped": ["q77"], "blank": math.nan,
    })
    assert errors == [
        "keys.A.q2: must not be blank (a question no one can get right is dropped instead)",
        "accepted.q1: must be a list of answers, such as [\"A\", \"BD\"]",
        "accepted.q4[1]: 'X' is not an answer to q4 (options A, B, C, D, E)",
        "dropped[0]: unknown question 'q77'",
        "wrong: must be a number, not '-1'",
        "blank: must be a number, not nan",
        "points.q1: must be a number more than 0, not 0",
        "points.q3: q3 is not in the exam (no key, accepted answer or drop names it)",
        "points.q55: unknown question 'q55'",
    ]
    assert "q77" in str(ExamRulesError(errors))


def test_a_question_keyed_on_one_version_needs_a_key_on_every_version():
    errors = errors_of({"keys": {"A": {"q1": "A", "q2": "B"}, "B": {"q1": "C"}}})
    assert errors == ["keys.B: no key for q2, which is scored and has no accepted answer"]
    # accepted answers hold on every version, and a dropped question needs no key
    parse({"keys": {"A": {"q1": "A", "q2": "B"}, "B": {"q1": "C"}}, "accepted": {"q2": ["B"]}})
    parse({"keys": {"A": {"q1": "A", "q2": "B"}, "B": {"q1": "C"}}, "dropped": ["q2"]})


def test_keys_are_required():
    assert errors_of({}) == ["keys: must be an object with one answer key per version, such as {\"A\": {\"q1\": \"B\"}}"]
    assert errors_of({"keys": {"A": ["B"]}}) == ["keys.A: must be an object {question: answer}"]
    assert errors_of({"keys": {"A": {}}}) == ["keys: name no question: an exam needs at least one"]
    with pytest.raises(ExamRulesError, match="must be a JSON object"):
        parse(["keys"])


def test_a_template_without_a_version_field_takes_one_key_for_every_sheet():
    rules = parse({"keys": {"A": {"q1": "A"}}}, versions=None)
    assert rules.one_key_for_all
    errors = errors_of({"keys": {"A": {"q1": "A"}, "B": {"q1": "B"}}}, versions=None)
    assert errors == ["keys: the template has no version field, so the exam takes one key, not 2"]


def test_own_marking_and_credit_are_checked():
    rules = parse({
        "keys": {"A": {"q1": "A", "q2": "B"}}, "points": {"q1": 2}, "wrong": -1,
        "marking": {"q1": {"blank": -0.5}}, "credit": {"q1": {"C": 0.5}},
    })
    assert rules.marking_for("q1") == Marking(wrong=-1, blank=-0.5, multiple=0)
    assert rules.marking_for("q2") == Marking(wrong=-1, blank=0, multiple=0)
    assert rules.credit == {"q1": {"C": 0.5}}
    errors = errors_of({
        "keys": {"A": {"q1": "A"}}, "marking": {"q1": {"bonus": 1}, "q5": {"wrong": 1}},
        "credit": {"q1": {"A": 0.5, "B": 1}},
    })
    assert errors == [
        "marking.q1: must be an object with some of wrong, blank, multiple",
        "marking.q5: q5 is not in the exam (no key, accepted answer or drop names it)",
        "credit.q1.A: 'A' is already a right answer to q1",
        "credit.q1.B: 1 is the question's full points or more: list 'B' in accepted instead",
    ]


def test_rules_come_back_as_the_json_they_were_read_from():
    data = {
        "keys": {"A": {"q1": "B", "q2": "C", "q9": "BD"}, "B": {"q1": "A", "q2": "C", "q9": "E"}},
        "points": {"q1": 2.0, "q2": 0.5, "q9": 1.0, "q7": 1.0}, "wrong": -0.25, "blank": 0.0, "multiple": -0.5,
        "accepted": {"q2": ["A", "BD"]}, "dropped": ["q7"], "marking": {"q2": {"wrong": -1.0, "blank": 0.0, "multiple": -1.0}},
        "credit": {"q1": {"C": 0.5}},
    }
    rules = parse(data)
    again = parse(rules.to_json())
    assert again == rules
    assert rules.to_json()["points"] == {"q1": 2.0, "q2": 0.5, "q7": 1.0, "q9": 1.0}
