"""Scoring and item analysis speed: 10,000 students x 100 questions, and one
sheet's correction.

    python bench/scoring.py [--students 10000] [--questions 100] [--runs 5] [--corrections 50]

The answers are simulated (``batches.scoring.simulate``: each student an
ability, each question a difficulty, four versions with their own keys) and
given as the server holds them, one {field: answer as read} per sheet. Printed,
each the median of ``--runs`` runs:

- encode: answer strings -> option masks;
- score: every sheet's points per question and total;
- analyse: item analysis (items.json), histogram and miskey hints;
- total: the three, what a key change costs (plus loading the answers);
- correction: one sheet re-scored and the statistics updated (its old share of
  the sums out, the new one in), then every figure computed again.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import median

from batches.scoring.items import ItemStatistics, rescore_sheet
from batches.scoring.rules import parse_exam_rules
from batches.scoring.scoring import compile_rules, encode_answers, score_masks, version_indexes
from batches.scoring.simulate import simulate_answers

VERSIONS = ("A", "B", "C", "D")
OPTIONS = tuple("ABCDE")


def make_exam(rng: np.random.Generator, students: int, questions: int):
    names = [f"q{i}" for i in range(1, questions + 1)]
    keys = {v: {q: OPTIONS[rng.integers(len(OPTIONS))] for q in names} for v in VERSIONS}
    rules = parse_exam_rules(
        {"keys": keys, "points": {"q1": 2, "q2": 0.5}, "wrong": -0.25, "multiple": -0.5,
         "accepted": {"q3": ["AB"]}, "dropped": ["q4"]},
        questions=dict.fromkeys(names, OPTIONS), versions=list(VERSIONS),
    )
    sheets, versions = [], []
    per_version = students // len(VERSIONS)
    for v in VERSIONS:
        answers = simulate_answers(rng, per_version, [keys[v][q] for q in names], OPTIONS, reversed_questions=[5])
        sheets += [dict(zip(names, row, strict=True)) for row in answers.tolist()]
        versions += [v] * per_version
    return rules, sheets, versions


def analyse(stats: ItemStatistics):
    return stats.items(), stats.summary(), stats.miskey_hints()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--corrections", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rules, sheets, versions = make_exam(rng, args.students, args.questions)
    print(f"{len(sheets)} sheets x {args.questions} questions, {len(VERSIONS)} versions; median of {args.runs} runs")

    times: dict[str, list[float]] = {"compile": [], "encode": [], "score": [], "analyse": [], "total": []}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        tables = compile_rules(rules)
        t1 = time.perf_counter()
        masks = encode_answers(tables, sheets)
        keys = version_indexes(tables, versions)
        t2 = time.perf_counter()
        scored = score_masks(tables, masks, keys)
        t3 = time.perf_counter()
        stats = ItemStatistics.of(tables, scored)
        report, summary, hints = analyse(stats)
        t4 = time.perf_counter()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            times[name].append(seconds)
    for name, values in times.items():
        print(f"  {name:<8} {median(values) * 1000:8.1f} ms")
    print(f"  mean score {summary['mean']:.2f} / {rules.max_score:g}, KR-20 {report['kr20']:.3f}, "
          f"miskey hints for {sorted({h['question'] for h in hints})}")

    corrections = []
    for i in rng.choice(len(sheets), size=args.corrections, replace=False):
        answers = dict(sheets[i])
        answers["q10"] = "" if answers["q10"] else "B"
        t0 = time.perf_counter()
        rescore_sheet(tables, stats, (sheets[i], versions[i]), (answers, versions[i]))
        analyse(stats)
        corrections.append(time.perf_counter() - t0)
        sheets[i] = answers
    print(f"  correction {median(corrections) * 1000:6.2f} ms (median of {args.corrections}; "
          f"slowest {max(corrections) * 1000:.2f} ms): one sheet re-scored, statistics updated and computed")


if __name__ == "__main__":
    main()
