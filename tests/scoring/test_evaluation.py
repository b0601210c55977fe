"""OMRChecker's evaluation.json imported as an exam's rules, on OMRChecker's own
samples (tests/data/omrchecker-evaluation) and on every marking form it has."""

import csv
import json
from pathlib import Path

import pytest

from batches.scoring.evaluation import import_evaluation, load_evaluation
from batches.scoring.rules import ExamRulesError, Marking
from batches.scoring.scoring import compile_rules, score_sheets

DATA = Path(__file__).resolve().parents[1] / "data" / "omrchecker-evaluation"
MCQ4 = tuple("ABCD")


def mcq4(n):
    return {f"q{i}": MCQ4 for i in range(1, n + 1)}


def scores_of(rules, sheets):
    return score_sheets(compile_rules(rules), sheets, [None] * len(sheets)).scores.tolist()


def answers_read(folder):
    with open(DATA / folder / "answers_read.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sample4_custom_answers_with_several_correct():
    imported = load_evaluation(DATA / "sample4" / "evaluation.json", questions=mcq4(11))
    rules = imported.rules
    assert imported.notes == ()
    assert rules.keys == {"A": dict(zip([f"q{i}" for i in (1, 2, 3, 4, 5, 6, 8, 9, 10, 11)], "BDCBDCACDC", strict=True))}
    assert rules.accepted == {"q7": ("B", "C", "BC")}
    assert set(rules.points.values()) == {3.0} and rules.max_score == 33
    assert rules.marking == Marking(wrong=-1, blank=0, multiple=-1) and rules.question_marking == {}
    assert rules.one_key_for_all
    # OMRChecker master scores these three sheets 33, 33 and -2
    assert scores_of(rules, answers_read("sample4")) == [33, 33, -2]


def test_umarfarootaps_csv_key_with_several_and_weighted_answers():
    imported = load_evaluation(DATA / "community" / "UmarFarootAPS" / "evaluation.json", questions=mcq4(200))
    rules = imported.rules
    assert len(rules.questions) == 200
    assert rules.keys["A"]["q1"] == "C" and rules.keys["A"]["q200"] == "A"
    assert "q3" not in rules.keys["A"]
    # "D,E": E is not an option of a four-option question, so only D can be read
    assert rules.accepted["q3"] == ("D",)
    assert imported.notes == ("answer_key.csv line 3[1]: 'E' is not an answer to q3 (options A, B, C, D); "
                              "it can never be read, so it is left out",)
    assert rules.accepted["q4"] == ("A", "AB")
    # [['A', '1'], ['B', '2']]: B earns the full 2 points, A earns 1
    assert rules.accepted["q5"] == ("B",) and rules.credit == {"q5": {"A": 1.0}} and rules.points["q5"] == 2
    assert rules.accepted["q6"] == ("A", "B")
    assert rules.max_score == 201
    assert rules.marking == Marking(0, 0, 0)
    # OMRChecker master scores the two scans 49 and 20
    assert scores_of(rules, answers_read("community/UmarFarootAPS")) == [49, 20]


# Sections with their own marking, fractions as strings, both bonus forms and
# weighted answers with a negative weight. The expected scores are the ones
# OMRChecker master's evaluate_concatenated_response gives for the same rows.
SECTIONS = {
    "source_type": "custom",
    "options": {
        "questions_in_order": ["q1..10"],
        "answers_in_order": ["A", "B", ["C", "D"], "AB", [["A", 2], ["B", "1/2"], ["C", -1]], "D", "A", "B", "C", "D"],
        "should_explain_scoring": True,
    },
    "marking_schemes": {
        "DEFAULT": {"correct": "1", "incorrect": "-1/4", "unmarked": 0},
        "HARD": {"questions": ["q6..7"], "marking": {"correct": 2, "incorrect": "-1", "unmarked": "-1/2"}},
        "BONUS_MARKS_ON_ATTEMPT": {"questions": ["q8"], "marking": {"correct": 1, "incorrect": 1, "unmarked": 0}},
        "BONUS_MARKS_FOR_ALL": {"questions": ["q9"], "marking": {"correct": 1, "incorrect": 1, "unmarked": 1}},
    },
}
SECTION_ROWS = {
    "A,B,C,AB,A,D,A,B,C,D": 13.0,
    ",,,,,,,,,": 0.0,
    "B,A,A,A,C,A,B,C,D,A": -2.25,
    "AB,AB,CD,AB,B,AD,AD,AC,AB,": 0.75,
    "D,,D,,B,,D,,B,C": 0.5,
}


def test_sections_fractions_bonus_and_weighted_answers_score_as_omrchecker_does():
    rules = import_evaluation(SECTIONS, questions=mcq4(10), versions=["A", "B"], version="B").rules
    assert list(rules.keys) == ["B"] and not rules.one_key_for_all
    assert rules.marking == Marking(wrong=-0.25, blank=0, multiple=-0.25)
    assert rules.question_marking == {
        "q6": Marking(wrong=-1, blank=-0.5, multiple=-1),
        "q7": Marking(wrong=-1, blank=-0.5, multiple=-1),
        "q8": Marking(wrong=1, blank=0, multiple=1),
    }
    assert rules.dropped == ("q9",)
    assert rules.points == {"q1": 1, "q2": 1, "q3": 1, "q4": 1, "q5": 2, "q6": 2, "q7": 2, "q8": 1, "q9": 1, "q10": 1}
    assert rules.accepted == {"q3": ("C", "D"), "q5": ("A",)}
    assert rules.credit == {"q5": {"B": 0.5, "C": -1.0}}
    sheets = [{f"q{i + 1}": a for i, a in enumerate(row.split(","))} for row in SECTION_ROWS]
    tables = compile_rules(rules)
    assert score_sheets(tables, sheets, ["B"] * len(sheets)).scores.tolist() == list(SECTION_ROWS.values())


def test_an_imported_exam_reads_back_through_the_api_json():
    from batches.scoring.rules import parse_exam_rules

    rules = import_evaluation(SECTIONS, questions=mcq4(10)).rules
    assert parse_exam_rules(json.loads(json.dumps(rules.to_json())), questions=mcq4(10), versions=None) == rules


def refused(evaluation, questions=None, **kwargs):
    with pytest.raises(ExamRulesError) as caught:
        import_evaluation(evaluation, questions=questions or mcq4(10), **kwargs)
    return caught.value.errors


def custom(questions, answers, schemes=None):
    return {"source_type": "custom", "options": {"questions_in_order": questions, "answers_in_order": answers},
            "marking_schemes": schemes or {"DEFAULT": {"correct": 1, "incorrect": 0, "unmarked": 0}}}


def test_what_cannot_be_represented_or_omrchecker_refuses_is_refused_by_path():
    assert refused({"source_type": "local", "options": {}, "marking_schemes": {}}) == [
        "source_type: must be \"csv\" or \"custom\", not 'local'"]
    assert refused({"options": {}}) == ["source_type: is required", "marking_schemes: is required"]
    assert refused(custom([], [])) == ["options.questions_in_order: names no question"]
    assert refused(custom(["q1..3"], ["A", "B"])) == ["options.answers_in_order: has 2 answers for 3 questions in order"]
    assert refused(custom(["q1..3", "q3"], ["A", "B", "C"])) == ["options.questions_in_order[1]: 'q3' names q3 again"]
    assert refused(custom(["q5..3"], [])) == [
        "options.questions_in_order[0]: 'q5..3': the range must go up (5 is not less than 3)"]
    assert refused(custom(["q10..11"], ["A", "E"])) == [
        "options.answers_in_order[1]: q11 is not a question of the template"]
    errors = refused(custom(["q1..4"], ["E", ["E", "F"], [["A", 0], ["B", -1]], 5]))
    assert errors == [
        "options.answers_in_order[0]: 'E' is not an answer to q1 (options A, B, C, D)",
        "options.answers_in_order[1]: none of these answers can be read on q2 (options A, B, C, D)",
        "options.answers_in_order[2]: no answer earns more than 0 (highest 0), so none can be right",
        "options.answers_in_order[3]: 5 is not an answer, a list of 2 or more answers, or a list of [answer, score] pairs",
    ]
    schemes = {"DEFAULT": {"correct": "x", "incorrect": 0, "unmarked": 0},
               "S1": {"questions": ["q1..2"], "marking": {"correct": 0, "incorrect": -1, "unmarked": 0}},
               "S2": {"questions": ["q2", "q7"], "marking": {"correct": 1, "incorrect": -1, "unmarked": 0}}}
    assert refused(custom(["q1..3"], ["A", "B", "C"], schemes)) == [
        "marking_schemes.DEFAULT.correct: must be a number or a fraction such as \"-1/3\", not 'x'",
        "marking_schemes.S2.questions: q2 is already in section S1",
        "marking_schemes.S2.questions: q7 has no answer in the key",
    ]
    schemes = {"DEFAULT": {"correct": 1, "incorrect": 0, "unmarked": 0},
               "S1": {"questions": ["q1"], "marking": {"correct": 0, "incorrect": -1, "unmarked": 0}}}
    assert refused(custom(["q1"], ["A"], schemes)) == [
        "marking_schemes.S1.marking.correct: must be more than 0 for q1 to have a right answer"]
    assert refused(custom(["q1"], ["A"]), versions=["A", "B"], version="C") == [
        "version: 'C' is not one of the sheet's versions (A, B)"]


def test_csv_answer_keys(tmp_path):
    (tmp_path / "evaluation.json").write_text(json.dumps({
        "source_type": "csv", "options": {"answer_key_csv_path": "key.csv"},
        "marking_schemes": {"DEFAULT": {"correct": "2", "incorrect": "-1/2", "unmarked": "0"}}}))
    (tmp_path / "key.csv").write_text("q1,A\n\nq2,\"B, C\"\nq3,\"['A', 'CD']\"\nq4,\"[['A', 2], ['B', 1]]\"\n")
    rules = load_evaluation(tmp_path / "evaluation.json", questions=mcq4(10)).rules
    assert rules.keys == {"A": {"q1": "A"}}
    assert rules.accepted == {"q2": ("B", "C"), "q3": ("A", "CD"), "q4": ("A",)}
    assert rules.credit == {"q4": {"B": 1.0}} and rules.max_score == 8
    (tmp_path / "key.csv").write_text("q1,A\nq1,B\nq2\nq3,\"[oops\"\nq99,A\n")
    with pytest.raises(ExamRulesError) as caught:
        load_evaluation(tmp_path / "evaluation.json", questions=mcq4(10))
    assert caught.value.errors == [
        "key.csv line 2: q1 is given twice",
        "key.csv line 3: must be question,answer (found 1 columns)",
        "key.csv line 4: '[oops' is not a list such as ['A', 'B'] or [['A', 1], ['B', 2]]",
    ]


def test_csv_answer_keys_that_cannot_be_read_are_refused(tmp_path):
    def evaluation(options):
        path = tmp_path / "evaluation.json"
        path.write_text(json.dumps({"source_type": "csv", "options": options,
                                    "marking_schemes": {"DEFAULT": {"correct": 1, "incorrect": 0, "unmarked": 0}}}))
        with pytest.raises(ExamRulesError) as caught:
            load_evaluation(path, questions=mcq4(10))
        return caught.value.errors

    assert evaluation({"answer_key_csv_path": "missing.csv"}) == ["options.answer_key_csv_path: 'missing.csv': not found"]
    assert evaluation({"answer_key_csv_path": "../outside.csv"}) == [
        "options.answer_key_csv_path: '../outside.csv' leads out of the evaluation's folder"]
    assert evaluation({"answer_key_image_path": "key.jpg"}) == [
        "options.answer_key_image_path: reading the answer key from an image is not supported: "
        "give the key as a CSV in answer_key_csv_path"]
    assert evaluation({"answer_key_csv_path": "k.csv", "colour": "red"}) == [
        "options.colour: is not an option of source_type 'csv'", "options.answer_key_csv_path: 'k.csv': not found"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ExamRulesError, match="bad.json: cannot be read as JSON"):
        load_evaluation(tmp_path / "bad.json", questions=mcq4(10))
