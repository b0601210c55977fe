"""Property tests (Hypothesis): for random rules and random sheets, the array
scoring equals the rules applied answer by answer, the item analysis equals the
definitions computed directly (numpy's correlation and variance), and any
sequence of corrections leaves the statistics a full recount would give."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batches.scoring.items import ItemStatistics
from batches.scoring.rules import parse_exam_rules
from batches.scoring.scoring import compile_rules, score_sheet, score_sheets

OPTIONS = ("A", "B", "C", "D")
QUESTIONS = {f"q{i}": OPTIONS for i in range(1, 7)}
VERSIONS = ["A", "B"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

answers = st.sampled_from(["", "A", "B", "C", "D", "AB", "BD", "ACD"])
non_blank = answers.filter(bool)
amounts = st.sampled_from([0, -0.25, -1, -1 / 3, 0.5])


@st.composite
def exams(draw):
    keys = {v: {q: draw(non_blank) for q in QUESTIONS} for v in VERSIONS}
    points = {q: draw(st.sampled_from([1, 2, 0.5, 0.1, 1.5])) for q in QUESTIONS}
    accepted = {q: [draw(non_blank)] for q in QUESTIONS if draw(st.booleans()) and draw(st.booleans())}
    dropped = [q for q in QUESTIONS if draw(st.integers(0, 5)) == 0]
    data = {"keys": keys, "points": points, "wrong": draw(amounts), "blank": draw(amounts),
            "multiple": draw(amounts), "accepted": accepted, "dropped": dropped}
    rules = parse_exam_rules(data, questions=QUESTIONS, versions=VERSIONS + ["C"])
    n = draw(st.integers(1, 25))
    sheets = [{q: draw(answers) for q in QUESTIONS} for _ in range(n)]
    versions = [draw(st.sampled_from(["A", "B", "B", "C", None])) for _ in range(n)]
    return data, rules, sheets, versions


def earned_by_the_rules(data, question, answer, version):
    """The rules of docs/scoring.md, one answer at a time."""
    points = data["points"][question]
    if question in data["dropped"]:
        return points
    if answer == data["keys"][version][question] or answer in data["accepted"].get(question, []):
        return points
    if answer == "":
        return data["blank"]
    return data["multiple"] if len(answer) > 1 else data["wrong"]


@SETTINGS
@given(exams())
def test_array_scoring_equals_the_rules_answer_by_answer(exam):
    data, rules, sheets, versions = exam
    scored = score_sheets(compile_rules(rules), sheets, versions)
    for i, (sheet, version) in enumerate(zip(sheets, versions, strict=True)):
        if version not in ("A", "B"):
            assert math.isnan(scored.scores[i])
            continue
        expected = [earned_by_the_rules(data, q, sheet[q], version) for q in QUESTIONS]
        assert scored.earned[i].tolist() == expected
        assert scored.scores[i] == round(sum(expected), 6)
        assert scored.right[i].tolist() == [e >= data["points"][q] for e, q in zip(expected, QUESTIONS, strict=True)]


@SETTINGS
@given(exams())
def test_item_analysis_equals_the_definitions(exam):
    _, rules, sheets, versions = exam
    tables = compile_rules(rules)
    scored = score_sheets(tables, sheets, versions)
    report = ItemStatistics.of(tables, scored).items()
    keep = scored.scored
    items = [q for q in QUESTIONS if q not in rules.dropped]
    x = scored.right[keep][:, [list(QUESTIONS).index(q) for q in items]].astype(float)
    n = int(keep.sum())
    assert report["students"] == n and list(report["items"]) == items
    total = x.sum(axis=1)
    for j, q in enumerate(items):
        item = report["items"][q]
        if n == 0:
            assert item["difficulty"] is None
            continue
        assert item["difficulty"] == x[:, j].mean()
        rest = total - x[:, j]
        if x[:, j].std() == 0 or rest.std() == 0:
            assert item["discrimination"] is None
        else:
            assert math.isclose(item["discrimination"], np.corrcoef(x[:, j], rest)[0, 1], abs_tol=1e-9)
        chosen = Counter(sheet[q] for sheet, k in zip(sheets, keep, strict=True) if k)
        assert item["options"] == {
            **{o: chosen[o] for o in OPTIONS}, "blank": chosen[""],
            "multiple": sum(c for a, c in chosen.items() if len(a) > 1),
        }
    k = len(items)
    if n == 0 or k < 2 or total.var() == 0:
        assert report["kr20"] is None
    else:
        p = x.mean(axis=0)
        assert math.isclose(report["kr20"], k / (k - 1) * (1 - (p * (1 - p)).sum() / total.var()), abs_tol=1e-9)


@SETTINGS
@given(exams(), st.data())
def test_corrections_leave_what_a_full_recount_gives(exam, data):
    _, rules, sheets, versions = exam
    tables = compile_rules(rules)
    stats = ItemStatistics.of(tables, score_sheets(tables, sheets, versions))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(sheets) - 1))
        before = score_sheet(tables, sheets[i], versions[i])
        sheets[i] = {**sheets[i], data.draw(st.sampled_from(list(QUESTIONS))): data.draw(answers)}
        versions[i] = data.draw(st.sampled_from(["A", "B", "C", None]))
        stats.replace(before, score_sheet(tables, sheets[i], versions[i]))
    full = ItemStatistics.of(tables, score_sheets(tables, sheets, versions))
    assert stats.items() == full.items()
    assert stats.miskey_hints() == full.miskey_hints()
    assert stats.summary()["histogram"] == full.summary()["histogram"]
