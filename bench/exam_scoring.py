"""Scoring on the server: a batch of simulated sheets scored for an exam,
a reviewer's correction (the sheet re-scored, the statistics moved, the
change logged), the results page, and a change of key (every sheet
re-scored), timed through the services the pipeline, the review actions, the
page and ``PUT /api/exams/{id}`` call.

    .venv/bin/python bench/exam_scoring.py [--sheets 2000] [--questions 100]

Uses ``DATABASE_URL`` when set (PostgreSQL: a database of its own, it is
filled), else a temporary SQLite file. The answers are simulated
(``batches.scoring.simulate``); no image is read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
_tmp = tempfile.mkdtemp(prefix="omr-exam-bench-")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{_tmp}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omrsite.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402

from bench._common import median  # noqa: E402

TEMPLATES = {20: "a4-20q-5", 50: "a4-50q-5", 100: "a4-100q-5"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sheets", type=int, default=2000)
    parser.add_argument("--questions", type=int, choices=sorted(TEMPLATES), default=100)
    parser.add_argument("--corrections", type=int, default=30)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    from batches.exams import scores, services
    from batches.models import Answer, Batch, Sheet, SheetStatus, Stage
    from batches.review import actions as review
    from batches.scoring.simulate import simulate_answers

    template = TEMPLATES[args.questions]
    questions = [f"q{i}" for i in range(1, args.questions + 1)]
    options = "ABCDE"
    rng = np.random.default_rng(7)
    keys = {v: {q: options[int(rng.integers(5))] for q in questions} for v in "AB"}
    user, _ = get_user_model().objects.get_or_create(username="bench-exams", defaults={"is_staff": True})
    exam = services.create_exam(user, {"name": "bench", "template": template, "keys": keys, "wrong": -0.25})
    print(f"{args.sheets} sheets x {args.questions} questions, 2 versions, on {django.db.connection.vendor}")

    # The sheets and their answer rows, as the pipeline leaves them
    simulated = {v: simulate_answers(np.random.default_rng(3), args.sheets, [keys[v][q] for q in questions], options)
                 for v in "AB"}
    batch = Batch.objects.create(owner=user, template=template, exam=exam, stage=Stage.COMPLETED,
                                 original_filename="bench.zip")
    sheets = Sheet.objects.bulk_create([Sheet(batch=batch, index=i + 1, source_name=f"s{i}.jpg", image="x",
                                              status=SheetStatus.DONE, template=template, template_page=1,
                                              student=f"{100000 + i}") for i in range(args.sheets)], batch_size=1000)
    rows = []
    for i, sheet in enumerate(sheets):
        version = "AB"[i % 2]
        answers = dict(zip(questions, simulated[version][i], strict=True))
        rows.append(Answer(sheet=sheet, field="exam_version", value=version))
        rows.extend(Answer(sheet=sheet, field=q, value=answers.get(q, "")) for q in questions)
    Answer.objects.bulk_create(rows, batch_size=5000)

    started = time.perf_counter()
    scores.score_batch(batch)
    print(f"  score the batch   {(time.perf_counter() - started) * 1000:8.1f} ms (gather, score, save rows, statistics)")

    # A correction as the review screens make it; the exam's share of it (the
    # sheet re-scored, the statistics moved and saved) is timed on its own,
    # beside the whole action, which also rewrites the batch's CSV after commit.
    rescoring: list[float] = []
    rescore = review.exam_scores.rescore_after_change

    def timed_rescore(sheet_id):
        started = time.perf_counter()
        try:
            return rescore(sheet_id)
        finally:
            rescoring.append(time.perf_counter() - started)

    review.exam_scores.rescore_after_change = timed_rescore
    timings = []
    for n in range(args.corrections):
        sheet = sheets[(n * 37) % len(sheets)]
        value = options[n % 5]
        started = time.perf_counter()
        review.apply_corrections(sheet, user, {questions[n % len(questions)]: value})
        timings.append(time.perf_counter() - started)
    review.exam_scores.rescore_after_change = rescore
    print(f"  correction        {median(rescoring) * 1000:8.1f} ms (median of {len(rescoring)}; slowest "
          f"{max(rescoring) * 1000:.1f} ms): sheet re-scored, statistics moved and saved")
    print(f"  whole action      {median(timings) * 1000:8.1f} ms (median; slowest {max(timings) * 1000:.1f} ms): "
          "answer saved, correction logged, counts, the above, and the batch's CSV rewritten")
    started = time.perf_counter()
    exam.refresh_from_db()
    stats = scores.exam_statistics(exam)
    print(f"  statistics read   {(time.perf_counter() - started) * 1000:8.1f} ms ({stats.sheets} sheets, "
          f"KR-20 {stats.kr20() or 0:.3f})")

    results_page(exam, user, args.sheets)

    changed = {**keys, "A": {**keys["A"], "q1": "E" if keys["A"]["q1"] != "E" else "A"}}
    started = time.perf_counter()
    with transaction.atomic():
        update = services.update_exam(exam, user, {"name": "bench", "template": template, "keys": changed,
                                                   "wrong": -0.25})
    print(f"  change of key     {(time.perf_counter() - started) * 1000:8.1f} ms ({update.rescored} sheets "
          f"re-scored and logged)")


def results_page(exam, user, sheets: int) -> None:
    """The results page as a browser gets it (whole page, then the table alone
    as a sort asks for it with htmx), a page of rows at a time and, in the
    same run, with every row on one page."""
    from django.test import Client
    from django.urls import reverse

    from batches.exams import results

    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    url = reverse("batches:exam-results", args=[exam.pk])
    paged = results.ROWS_PER_PAGE
    for label, per_page in ((f"{paged} rows a page", paged), ("every row", max(sheets, 1))):
        results.ROWS_PER_PAGE = per_page
        whole, table = [], []
        for _ in range(3):
            started = time.perf_counter()
            assert client.get(url).status_code == 200
            whole.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert client.get(url, {"sort": "q7"}, headers={"HX-Request": "true"}).status_code == 200
            table.append(time.perf_counter() - started)
        print(f"  results page      {median(whole) * 1000:8.1f} ms whole, {median(table) * 1000:.1f} ms the table "
              f"sorted by a question (median of 3; {label})")
    results.ROWS_PER_PAGE = paged


if __name__ == "__main__":
    main()
