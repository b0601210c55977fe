"""A simulated class for the exam pages: answers from the latent-ability
simulator (``batches.scoring.simulate``), stored as the pipeline stores
readings and scored by the services (``tests.exam_helpers.add_batch``), with
a realistic share of doubtful sheets (fields flagged faint, ambiguous or
erased, the sheet marked for review), a student scanned twice, students
whose number was misread and students absent.

Used by the browser test and to draw the pages' screenshots."""

from __future__ import annotations

import numpy as np

from batches.exams import roster, services
from batches.models import Batch
from batches.scoring.simulate import simulate_answers

from .exam_helpers import add_batch, reading

TEMPLATE = "a4-50q-5"
OPTIONS = "ABCDE"
GROUPS = ("1A", "1B", "1C", "1D")
DOUBT_FLAGS = ("faint", "ambiguous", "erasure", "multiple")


def make_keys(rng: np.random.Generator, questions: int) -> dict[str, dict[str, str]]:
    a = [OPTIONS[i] for i in rng.integers(0, len(OPTIONS), questions)]
    b = [OPTIONS[i] for i in rng.integers(0, len(OPTIONS), questions)]
    return {v: {f"q{i + 1}": answer for i, answer in enumerate(key)} for v, key in (("A", a), ("B", b))}


def simulated_class(owner, *, students: int = 200, questions: int = 40, seed: int = 13, doubtful: float = 0.08,
                    absent: int = 4, name: str = "Biology midterm", batches: int = 2):
    """An exam of ``questions`` questions on two versions, its roster of
    ``students`` and their sheets in ``batches`` batches, scored. Question 9
    is written so that the weaker students get it right more often; version
    A's key of question 17 is wrong (the class mostly marks the option that
    really is right). Returns (exam, batches)."""
    rng = np.random.default_rng(seed)
    keys = make_keys(rng, questions)
    true_keys = {v: dict(k) for v, k in keys.items()}
    wrong_key = OPTIONS[(OPTIONS.index(keys["A"]["q17"]) + 2) % len(OPTIONS)]
    keys["A"]["q17"] = wrong_key
    exam = services.create_exam(owner, {
        "name": name, "template": TEMPLATE, "keys": keys, "points": {f"q{i}": 2 for i in range(1, 6)},
        "wrong": -0.25, "dropped": []})
    numbers = [f"24{n:04d}" for n in range(1, students + 1)]
    lines = ["student_number,name,group"]
    first = ["Ada", "Ben", "Chloé", "Dev", "Ema", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Milo", "Nour"]
    last = ["Okafor", "Novak", "Silva", "Kim", "Moreau", "Rossi", "Haddad", "Nguyen", "Berg", "Costa", "Ito"]
    for i, number in enumerate(numbers):
        lines.append(f"{number},{first[i % len(first)]} {last[(i * 7) % len(last)]},{GROUPS[i % len(GROUPS)]}")
    roster.import_roster_csv(exam, "\n".join(lines) + "\n")

    sitting = numbers[absent:]
    versions = ["A" if i % 2 == 0 else "B" for i in range(len(sitting))]
    answers = {}
    for version in ("A", "B"):
        who = [n for n, v in zip(sitting, versions, strict=True) if v == version]
        key = [true_keys[version][f"q{i + 1}"] for i in range(questions)]
        simulated = simulate_answers(rng, len(who), key, OPTIONS, reversed_questions=[8])
        for n, row in zip(who, simulated, strict=True):
            answers[n] = {f"q{i + 1}": row[i] for i in range(questions)}

    readings = []
    for number, version in zip(sitting, versions, strict=True):
        sheet = {"student_number": number, "exam_version": version, **answers[number]}
        r = reading(sheet, template=TEMPLATE, qr=False)
        if rng.random() < doubtful:
            fields = rng.choice(questions, size=int(rng.integers(1, 4)), replace=False)
            r["flags"] = {f"q{q + 1}": [str(rng.choice(DOUBT_FLAGS))] for q in fields}
            r["confidence"] = {f"q{q + 1}": round(float(rng.uniform(0.3, 0.6)), 2) for q in fields}
            r["needs_review"] = True
        readings.append(r)
    # Two sheets whose student number was misread, and one student scanned twice.
    readings[3]["answers"]["student_number"] = "990001"
    readings[10]["answers"]["student_number"] = "990002"
    readings.append(dict(readings[20], answers=dict(readings[20]["answers"])))

    size = -(-len(readings) // batches)
    made = [add_batch(owner, exam, readings[k:k + size], template=TEMPLATE,
                      names=[f"scan_{k + j + 1:04d}.jpg" for j in range(len(readings[k:k + size]))])
            for k in range(0, len(readings), size)]
    for i, batch in enumerate(made, 1):
        Batch.objects.filter(pk=batch.pk).update(original_filename=f"{name.lower().replace(' ', '-')}-room-{i}.zip",
                                                 sheets_total=batch.sheets.count())
        batch.refresh_from_db()
    return exam, made
