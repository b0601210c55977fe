"""Item analysis checked against figures computed by hand, miskey hints, and a
correction's update of the statistics against counting everything again."""

import json
import math

import numpy as np
import pytest

from batches.scoring.items import ItemStatistics, rescore_sheet
from batches.scoring.rules import parse_exam_rules
from batches.scoring.scoring import compile_rules, score_sheet, score_sheets
from batches.scoring.simulate import simulate_answers

ABCD = tuple("ABCD")


def stats_for(data, sheets, versions=None, questions=None):
    questions = questions or {q: ABCD for q in ("q1", "q2", "q3", "q4")}
    tables = compile_rules(parse_exam_rules(data, questions=questions, versions=["A", "B"]))
    scored = score_sheets(tables, sheets, versions or ["A"] * len(sheets))
    return tables, scored, ItemStatistics.of(tables, scored)


# Five students, three items keyed A, B, C (one point each), q4 dropped:
#
#   sheet  q1  q2  q3   x1 x2 x3  T (items right)
#   1      A   B   C    1  1  1   3
#   2      A   B   D    1  1  0   2
#   3      A   C   C    1  0  1   2
#   4      B   ""  C    0  0  1   1
#   5      ""  AB  D    0  0  0   0
#
# difficulty: 3/5, 2/5, 3/5.
# q1 against the other items right R = T - x1 = 2,1,1,1,0 (mean 1, variance 2/5):
#   cov = (0.4*1 + 0.4*0 + 0.4*0 - 0.6*0 - 0.6*-1) / 5 = 0.2; var x1 = 0.6*0.4 = 0.24
#   r = 0.2 / sqrt(0.24 * 0.4) = 0.645497
# q2, R = 2,1,2,1,0 (mean 1.2, variance 2.8/5 = 0.56): cov = 0.6/5 = 0.12
#   r = 0.12 / sqrt(0.24 * 0.56) = 0.327327
# q3, R = 2,2,1,0,0 (mean 1): cov = (0.4 - 0.6 + 0 - 0.4 + 0.6) / 5 = 0, r = 0
# KR-20: k = 3, sum p(1-p) = 3 * 0.24 = 0.72, T = 3,2,2,1,0: mean 1.6, population
#   variance (1.96 + 0.16 + 0.16 + 0.36 + 2.56) / 5 = 1.04
#   KR-20 = 3/2 * (1 - 0.72/1.04) = 0.461538
HAND = [("A", "B", "C"), ("A", "B", "D"), ("A", "C", "C"), ("B", "", "C"), ("", "AB", "D")]


def hand_fixture():
    sheets = [dict(zip(("q1", "q2", "q3", "q4"), (*row, "A"), strict=True)) for row in HAND]
    return stats_for({"keys": {"A": {"q1": "A", "q2": "B", "q3": "C", "q4": "D"}}, "dropped": ["q4"]}, sheets)


def test_item_analysis_matches_the_hand_computation():
    _, scored, stats = hand_fixture()
    assert scored.scores.tolist() == [4, 3, 3, 2, 1]  # the dropped q4 gives everyone its point
    report = stats.items()
    assert report["students"] == 5
    assert list(report["items"]) == ["q1", "q2", "q3"]  # the dropped question is left out
    q1, q2, q3 = (report["items"][q] for q in ("q1", "q2", "q3"))
    assert (q1["difficulty"], q2["difficulty"], q3["difficulty"]) == (0.6, 0.4, 0.6)
    assert q1["discrimination"] == pytest.approx(0.645497, abs=1e-6)
    assert q2["discrimination"] == pytest.approx(0.327327, abs=1e-6)
    assert q3["discrimination"] == pytest.approx(0.0, abs=1e-12)
    assert q1["options"] == {"A": 3, "B": 1, "C": 0, "D": 0, "blank": 1, "multiple": 0}
    assert q2["options"] == {"A": 0, "B": 2, "C": 1, "D": 0, "blank": 1, "multiple": 1}
    assert q3["options"] == {"A": 0, "B": 0, "C": 3, "D": 2, "blank": 0, "multiple": 0}
    assert report["kr20"] == pytest.approx(0.461538, abs=1e-6)
    json.dumps(report)  # plain JSON, as items.json gives it


def test_discrimination_and_kr20_are_none_where_nothing_varies():
    sheets = [{"q1": "A", "q2": "B", "q3": a} for a in ("A", "B", "C")]
    _, _, stats = stats_for({"keys": {"A": {"q1": "A", "q2": "B", "q3": "A"}}}, sheets)
    items = stats.items()["items"]
    assert items["q1"]["discrimination"] is None  # everyone right on q1
    assert items["q3"]["discrimination"] is None  # the other items right are 2 on every sheet
    _, _, same = stats_for({"keys": {"A": {"q1": "A", "q2": "B"}}}, [{"q1": "A", "q2": "B"}] * 3)
    assert same.kr20() is None  # every sheet has the same number right
    _, _, single = stats_for({"keys": {"A": {"q1": "A"}}}, [{"q1": "A"}, {"q1": "B"}])
    assert single.kr20() is None  # one item
    empty = ItemStatistics.empty(single.tables)
    assert empty.items() == {"students": 0, "kr20": None, "items": {"q1": {
        "difficulty": None, "discrimination": None, "options": {"A": 0, "B": 0, "C": 0, "D": 0, "blank": 0, "multiple": 0}}}}


def test_an_item_is_right_when_it_earns_its_full_points():
    # partial credit is not right; an accepted double mark is
    sheets = [{"q1": "B"}, {"q1": "AC"}, {"q1": "A"}, {"q1": "D"}]
    _, scored, stats = stats_for({"keys": {"A": {"q1": "A"}}, "points": {"q1": 2}, "accepted": {"q1": ["AC"]},
                                  "credit": {"q1": {"B": 1}}}, sheets)
    assert scored.right[:, 0].tolist() == [False, True, True, False]
    assert stats.items()["items"]["q1"]["difficulty"] == 0.5


def test_sheets_not_scored_are_left_out():
    # version A is keyed; B is not; a blank version on an exam with one key is A
    sheets = [{"q1": "A"}, {"q1": "B"}, {"q1": "C"}]
    _, scored, stats = stats_for({"keys": {"A": {"q1": "A"}}}, sheets, versions=["A", "B", None])
    assert scored.scored.tolist() == [True, False, True]
    assert stats.sheets == 2
    assert stats.items()["items"]["q1"]["options"] == {"A": 1, "B": 0, "C": 1, "D": 0, "blank": 0, "multiple": 0}


def test_miskey_hints_name_a_distractor_above_the_key_and_negative_discrimination():
    # Given a simulated class of 300 where q1 is keyed with an answer few choose
    # and q2 is a question the weaker students get right more often
    rng = np.random.default_rng(11)
    names = [f"q{i}" for i in range(1, 11)]
    true_key = ["ABCD"[i % 4] for i in range(10)]
    answers = simulate_answers(rng, 300, true_key, ABCD, reversed_questions=[1])
    key = dict(zip(names, true_key, strict=True))
    key["q1"] = "D"  # the true answer is A
    sheets = [dict(zip(names, row, strict=True)) for row in answers]
    _, _, stats = stats_for({"keys": {"A": key}}, sheets, questions=dict.fromkeys(names, ABCD))
    # When the hints are asked for
    hints = stats.miskey_hints()
    # Then q1 and q2 are pointed out, and no other question
    assert sorted({h["question"] for h in hints}) == ["q1", "q2"]
    distractor = [h for h in hints if h["reason"] == "distractor_above_key"]
    assert len(distractor) == 1 and distractor[0]["question"] == "q1" and distractor[0]["answer"] == "A"
    q1_options = stats.items()["items"]["q1"]["options"]
    assert distractor[0]["chosen"] == q1_options["A"] and distractor[0]["right"] == q1_options["D"]
    assert {h["question"] for h in hints if h["reason"] == "negative_discrimination"} <= {"q1", "q2"}
    assert stats.items()["items"]["q2"]["discrimination"] < 0


def test_a_distractor_is_compared_with_the_key_of_its_own_version():
    # q1: version A's key D is chosen by 1 sheet, A by 3; version B's key C by both of its sheets
    rows = [("A", "A"), ("A", "A"), ("A", "A"), ("A", "D"), ("A", "B"), ("B", "C"), ("B", "C"), ("B", "A")]
    _, _, stats = stats_for({"keys": {"A": {"q1": "D"}, "B": {"q1": "C"}}}, [{"q1": a} for _, a in rows],
                            versions=[v for v, _ in rows])
    assert [h for h in stats.miskey_hints() if h["reason"] == "distractor_above_key"] == [
        {"question": "q1", "reason": "distractor_above_key", "version": "A", "answer": "A", "chosen": 3, "right": 1}
    ]


def test_score_summary_and_histogram():
    _, scored, stats = hand_fixture()
    summary = stats.summary()
    assert summary["sheets"] == 5 and summary["max_score"] == 4
    assert summary["mean"] == pytest.approx(2.6)
    assert summary["sd"] == pytest.approx(math.sqrt(1.04))
    # one bin per point from the lowest possible score (1: only the dropped point) to the maximum
    assert [(b["from"], b["count"]) for b in summary["histogram"]] == [(1, 1), (2, 1), (3, 2), (4, 1)]


def test_histogram_of_fractional_scores_has_round_bins_from_the_lowest_score():
    questions = {f"q{i}": ABCD for i in range(1, 41)}
    data = {"keys": {"A": dict.fromkeys(questions, "A")}, "wrong": -0.25, "points": {"q1": 2.5}}
    sheets = [dict.fromkeys(questions, "A"), dict.fromkeys(questions, "B"), {}]
    _, scored, stats = stats_for(data, sheets, questions=questions)
    assert scored.scores.tolist() == [41.5, -10, 0]
    bins = stats.summary()["histogram"]
    # -10 .. 41.5 in about 20 bins: 51.5 / 20 = 2.575, rounded up to a width of 5
    assert [b["from"] for b in bins] == list(range(-10, 41, 5))
    assert bins[-1]["to"] == 45
    assert bins[0]["count"] == 1 and bins[-1]["count"] == 1 and sum(b["count"] for b in bins) == 3


def random_exam(rng, sheets=400, questions=30):
    names = {f"q{i}": tuple("ABCDE") for i in range(1, questions + 1)}
    keys = {v: {q: "ABCDE"[rng.integers(5)] for q in names} for v in ("A", "B")}
    rules = parse_exam_rules({"keys": keys, "wrong": -0.25, "multiple": -0.5, "points": {"q2": 2},
                              "accepted": {"q5": ["AB"]}, "dropped": ["q7"]}, questions=names, versions=["A", "B", "C"])
    choices = ["", "A", "B", "C", "D", "E", "AB"]
    answers = [{q: choices[rng.integers(len(choices))] for q in names} for _ in range(sheets)]
    versions = [("A", "B", "C")[rng.integers(3)] for _ in range(sheets)]
    return compile_rules(rules), answers, versions


def test_rescoring_one_sheet_updates_the_statistics_as_a_full_rescore_would():
    rng = np.random.default_rng(3)
    tables, answers, versions = random_exam(rng)
    stats = ItemStatistics.of(tables, score_sheets(tables, answers, versions))
    for i in (5, 17, 17, 200):
        # Given a correction of sheet i (answers and version as read, then as corrected)
        before = score_sheet(tables, answers[i], versions[i])
        answers[i] = {**answers[i], "q1": "C", "q2": "", "q5": "AB", "q9": "BD"}
        versions[i] = "A" if versions[i] != "A" else "B"
        after = score_sheet(tables, answers[i], versions[i])
        # When only that sheet's share of the sums is replaced
        stats.replace(before, after)
        # Then every figure equals counting all sheets again
        full = ItemStatistics.of(tables, score_sheets(tables, answers, versions))
        assert stats.items() == full.items()
        assert stats.miskey_hints() == full.miskey_hints()
        for name in ("right", "chosen", "cross", "histogram"):
            np.testing.assert_array_equal(getattr(stats, name), getattr(full, name))
        assert (stats.sheets, stats.total, stats.total_sq) == (full.sheets, full.total, full.total_sq)
        assert stats.summary()["mean"] == pytest.approx(full.summary()["mean"], abs=1e-9)
        assert stats.summary()["sd"] == pytest.approx(full.summary()["sd"], abs=1e-9)


def test_statistics_survive_a_round_trip_through_json():
    tables, answers, versions = random_exam(np.random.default_rng(5), sheets=50)
    stats = ItemStatistics.of(tables, score_sheets(tables, answers, versions))
    again = ItemStatistics.from_dict(tables, json.loads(json.dumps(stats.to_dict())))
    assert again.items() == stats.items() and again.summary() == stats.summary()
    other, _, _ = random_exam(np.random.default_rng(6), sheets=1)  # same questions, other keys
    with pytest.raises(ValueError, match="counted with other rules"):
        ItemStatistics.from_dict(other, stats.to_dict())


def test_the_statistics_of_part_of_the_sheets_and_of_the_rest_add_up():
    tables, answers, versions = random_exam(np.random.default_rng(9), sheets=120)
    scored = score_sheets(tables, answers, versions)
    first_batch = np.arange(120) < 50
    part = ItemStatistics.of(tables, scored.subset(first_batch))
    rest = ItemStatistics.of(tables, scored.subset(~first_batch))
    assert part.sheets + rest.sheets == ItemStatistics.of(tables, scored).sheets
    part.add(scored.subset(~first_batch))
    assert part.items() == ItemStatistics.of(tables, scored).items()


def test_rescore_sheet_adds_corrects_and_takes_out_sheets():
    rng = np.random.default_rng(4)
    tables, answers, versions = random_exam(rng, sheets=60)
    scored = score_sheets(tables, answers[:50], versions[:50])
    stats = ItemStatistics.of(tables, scored)
    for i in range(50, 60):  # sheets read later join the exam
        rescore_sheet(tables, stats, None, (answers[i], versions[i]))
    corrected = {**answers[3], "q4": "E"}
    now = rescore_sheet(tables, stats, (answers[3], versions[3]), (corrected, "A"))
    answers[3], versions[3] = corrected, "A"
    assert now.scores[0] == score_sheet(tables, corrected, "A").scores[0]
    assert rescore_sheet(tables, stats, (answers[7], versions[7]), None) is None  # a sheet taken out
    del answers[7], versions[7]
    assert stats.items() == ItemStatistics.of(tables, score_sheets(tables, answers, versions)).items()
