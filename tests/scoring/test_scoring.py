"""Every scoring rule, on sheets scored together as arrays."""

import math

import numpy as np
import pytest

from batches.scoring.rules import parse_exam_rules
from batches.scoring.scoring import AnswerError, compile_rules, encode_answers, score_sheet, score_sheets

QUESTIONS = {f"q{i}": tuple("ABCDE") for i in range(1, 11)}


def tables_for(data, versions=("A", "B")):
    return compile_rules(parse_exam_rules(data, questions=QUESTIONS, versions=versions))


def earned(tables, answers, version="A"):
    """What each question earned on one sheet, by question name."""
    scored = score_sheet(tables, answers, version)
    return dict(zip(tables.questions, scored.earned[0].tolist(), strict=True)), scored


def test_a_right_answer_earns_the_points_of_its_version_key():
    tables = tables_for({"keys": {"A": {"q1": "B", "q2": "C"}, "B": {"q1": "C", "q2": "A"}}, "points": {"q1": 2}})
    by_q, scored = earned(tables, {"q1": "B", "q2": "C"}, "A")
    assert by_q == {"q1": 2, "q2": 1} and scored.scores[0] == 3
    by_q, scored = earned(tables, {"q1": "B", "q2": "A"}, "B")  # version A's answer to q1 is wrong on B
    assert by_q == {"q1": 0, "q2": 1}
    assert scored.right.tolist() == [[False, True]]


def test_accepted_answers_are_right_on_every_version_including_a_double_mark():
    tables = tables_for({
        "keys": {"A": {"q3": "B", "q9": "D"}, "B": {"q3": "E", "q9": "A"}},
        "accepted": {"q3": ["A", "C"], "q9": ["BD"]}, "multiple": -1,
    })
    for version in ("A", "B"):
        for answer in ("A", "C"):
            assert earned(tables, {"q3": answer}, version)[0]["q3"] == 1
        assert earned(tables, {"q9": "BD"}, version)[0]["q9"] == 1
        assert earned(tables, {"q9": "DB"}, version)[0]["q9"] == 1  # letters in any order
        assert earned(tables, {"q9": "BC"}, version)[0]["q9"] == -1  # another double mark is a multiple
    assert earned(tables, {"q3": "B"}, "A")[0]["q3"] == 1
    assert earned(tables, {"q3": "B"}, "B")[0]["q3"] == 0


def test_a_key_may_be_a_double_mark():
    tables = tables_for({"keys": {"A": {"q1": "AC"}}, "multiple": -0.5, "wrong": -0.25})
    assert earned(tables, {"q1": "AC"})[0]["q1"] == 1
    assert earned(tables, {"q1": "A"})[0]["q1"] == -0.25
    assert earned(tables, {"q1": "ABC"})[0]["q1"] == -0.5


def test_wrong_blank_and_multiple_are_fixed_amounts_not_scaled_by_points():
    tables = tables_for({"keys": {"A": {"q1": "B", "q2": "B"}}, "points": {"q1": 4, "q2": 0.5},
                         "wrong": -0.25, "blank": -0.1, "multiple": -0.75})
    assert earned(tables, {"q1": "A", "q2": "A"})[0] == {"q1": -0.25, "q2": -0.25}
    assert earned(tables, {"q1": "", "q2": None})[0] == {"q1": -0.1, "q2": -0.1}
    assert earned(tables, {})[0] == {"q1": -0.1, "q2": -0.1}  # a field not read counts as blank
    assert earned(tables, {"q1": "AB", "q2": "ABCDE"})[0] == {"q1": -0.75, "q2": -0.75}


def test_fractional_points_add_up_exactly():
    tables = tables_for({"keys": {"A": {"q1": "A", "q2": "A", "q3": "A"}}, "points": {"q1": 0.1, "q2": 0.2, "q3": 0.7}})
    scored = score_sheet(tables, {"q1": "A", "q2": "A"}, "A")
    assert scored.scores[0] == 0.3  # not 0.30000000000000004
    assert tables.rules.max_score == pytest.approx(1.0)


def test_a_dropped_question_gives_everyone_its_points():
    tables = tables_for({"keys": {"A": {"q1": "A", "q7": "C"}}, "points": {"q7": 2}, "dropped": ["q7"],
                         "wrong": -1, "multiple": -1, "blank": -1})
    for answer in ("", "A", "C", "AB"):
        assert earned(tables, {"q7": answer})[0]["q7"] == 2
    assert tables.rules.max_score == 3
    assert tables.counted.tolist() == [True, False]


def test_own_marking_and_credit_apply_to_their_question_only():
    tables = tables_for({"keys": {"A": {"q1": "A", "q2": "A"}}, "points": {"q1": 2}, "wrong": -0.5,
                         "marking": {"q1": {"wrong": -1, "blank": -0.5}}, "credit": {"q1": {"B": 0.5}}})
    assert earned(tables, {"q1": "C", "q2": "C"})[0] == {"q1": -1, "q2": -0.5}
    assert earned(tables, {"q1": "", "q2": ""})[0] == {"q1": -0.5, "q2": 0}
    by_q, scored = earned(tables, {"q1": "B"})
    assert by_q["q1"] == 0.5 and not scored.right[0, 0]  # partial credit is not right


def test_a_sheet_whose_version_has_no_key_is_not_scored():
    tables = tables_for({"keys": {"A": {"q1": "A"}, "B": {"q1": "B"}}}, versions=("A", "B", "C"))
    scored = score_sheets(tables, [{"q1": "A"}, {"q1": "A"}, {"q1": "A"}], ["A", "C", None])
    assert scored.scored.tolist() == [True, False, False]
    assert scored.scores[0] == 1 and math.isnan(scored.scores[1]) and math.isnan(scored.scores[2])
    assert not scored.right[1:].any()


def test_an_exam_with_one_key_scores_a_sheet_whose_version_was_left_blank():
    tables = tables_for({"keys": {"A": {"q1": "A"}}}, versions=("A", "B"))
    scored = score_sheets(tables, [{"q1": "A"}, {"q1": "A"}, {"q1": "A"}], ["A", None, "B"])
    assert scored.scores[:2].tolist() == [1, 1] and math.isnan(scored.scores[2])


def test_one_key_scores_every_sheet_when_the_template_has_no_version_field():
    tables = compile_rules(parse_exam_rules({"keys": {"A": {"q1": "A"}}}, questions=QUESTIONS, versions=None))
    scored = score_sheets(tables, [{"q1": "A"}, {"q1": "A"}], [None, "B"])
    assert scored.scores.tolist() == [1, 1]


def test_an_answer_that_is_not_an_option_is_an_error_naming_sheet_and_field():
    tables = tables_for({"keys": {"A": {"q1": "A", "q2": "B"}}})
    with pytest.raises(AnswerError, match=r"sheet 1, q2: 'Z' is not an answer \(options A, B, C, D, E\)"):
        encode_answers(tables, [{"q1": "A"}, {"q2": "Z"}])


def test_many_sheets_score_as_each_would_alone():
    rng = np.random.default_rng(7)
    key_a = {q: "ABCDE"[rng.integers(5)] for q in QUESTIONS}
    key_b = {q: "ABCDE"[rng.integers(5)] for q in QUESTIONS}
    tables = tables_for({"keys": {"A": key_a, "B": key_b}, "points": {"q2": 1.5}, "wrong": -0.25,
                         "multiple": -0.5, "blank": 0, "accepted": {"q3": ["AB"]}, "dropped": ["q10"]})
    choices = ["", "A", "B", "C", "D", "E", "AB", "CE"]
    sheets = [{q: choices[rng.integers(len(choices))] for q in QUESTIONS} for _ in range(300)]
    versions = [("A", "B", "C")[rng.integers(3)] for _ in sheets]
    together = score_sheets(tables, sheets, versions)
    for i, (sheet, version) in enumerate(zip(sheets, versions, strict=True)):
        alone = score_sheet(tables, sheet, version)
        np.testing.assert_array_equal(alone.scores, together.scores[i : i + 1])
        # and by the rules, written out plainly
        if version == "C":
            assert math.isnan(together.scores[i])
            continue
        key = key_a if version == "A" else key_b
        expected = 0.0
        for q, answer in sheet.items():
            points = 1.5 if q == "q2" else 1.0
            if q == "q10" or answer == key[q] or (q == "q3" and answer == "AB"):
                expected += points
            elif answer == "":
                expected += 0
            elif len(answer) > 1:
                expected -= 0.5
            else:
                expected -= 0.25
        assert together.scores[i] == pytest.approx(expected)
