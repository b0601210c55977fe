"""Answers of a simulated class, realistic enough for the statistics to mean
something: each student has an ability, each question a difficulty, and the
chance of a right answer follows the logistic (Rasch) model. A student who
does not know the answer leaves it blank, marks two options, or picks a wrong
option, the first distractor more often than the others. Used by the
benchmark, the tests and demonstrations; never by scoring itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def simulate_answers(
    rng: np.random.Generator,
    sheets: int,
    key: Sequence[str],
    options: Sequence[str],
    *,
    blank_rate: float = 0.04,
    multiple_rate: float = 0.01,
    reversed_questions: Sequence[int] = (),
) -> np.ndarray:
    """A (sheets x questions) array of answers as read (``""``, ``"B"``,
    ``"AC"``) for single-letter ``key`` answers. ``reversed_questions``: indexes
    of questions that the weaker students get right more often (a badly
    written question), so that item analysis has something to find."""
    nq = len(key)
    ability = rng.normal(0.0, 1.0, size=(sheets, 1))
    # most questions of a real test are answered right by 30 to 95 % of the class
    difficulty = np.clip(rng.normal(-0.7, 0.7, size=(1, nq)), -2.5, 0.5)
    logit = 1.7 * (ability - difficulty)
    for q in reversed_questions:
        logit[:, q] = 1.7 * (-ability[:, 0] - difficulty[0, q])
    knows = rng.random((sheets, nq)) < 1.0 / (1.0 + np.exp(-logit))
    slip = rng.random((sheets, nq))
    answers = np.empty((sheets, nq), dtype=object)
    options = list(options)
    for q in range(nq):
        right = key[q]
        wrong = [o for o in options if o != right]
        weights = np.array([1.5] + [1.0] * (len(wrong) - 1))
        picks = rng.choice(len(wrong), size=sheets, p=weights / weights.sum())
        column = np.array([wrong[i] for i in picks], dtype=object)
        column[knows[:, q]] = right
        column[slip[:, q] < blank_rate + multiple_rate] = "".join(sorted((right, wrong[0]), key=options.index))
        column[slip[:, q] < blank_rate] = ""
        answers[:, q] = column
    return answers
