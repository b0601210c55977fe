"""Scoring many sheets at once against an exam's rules, on arrays.

An answer is held as a bit mask of the options it marks (bit ``k`` for the
``k``-th option: blank is 0, ``"B"`` is 0b10, ``"BD"`` is 0b1010); a template
question has at most 8 options, so a sheet's answers are one ``uint8`` row.
The rules are compiled once into tables of what every possible answer earns on
every version and question, so scoring N sheets is one table look-up per
answer, with no per-sheet Python beyond turning the answer strings into masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .rules import ExamRules, answer_options

MAX_OPTIONS = 8
MASKS = 1 << MAX_OPTIONS
#: Number of options each mask marks.
POPCOUNT = np.array([bin(m).count("1") for m in range(MASKS)], dtype=np.int8)
#: Decimals scores are rounded to, so that sums of fractional points (0.1 + 0.2)
#: compare equal however they were added up.
SCORE_DECIMALS = 6


class AnswerError(ValueError):
    """An answer that is not one of the question's options (or a version that is not text)."""


def _mask_of(answer: str, options: Sequence[str]) -> int | None:
    picked = answer_options(answer, options)
    return None if picked is None else sum(1 << i for i in picked)


def _answer_codes(options: tuple[str, ...]) -> dict[str, int]:
    """Every answer as the reader writes it (options in printed order) -> its mask."""
    codes = {}
    for mask in range(1 << len(options)):
        codes["".join(o for i, o in enumerate(options) if mask >> i & 1)] = mask
    return codes


@dataclass(frozen=True, eq=False)
class ScoringTables:
    """An exam's rules compiled for array scoring.

    ``questions``/``versions``: the exam's, in order (column and version
    indexes below); ``earned[v, q, mask]``: what that answer earns;
    ``right[v, q, mask]``: whether it earns the question's full points;
    ``counted[q]``: False for a dropped question (left out of item analysis);
    ``points[q]``; ``codes[q]``: answer as read -> mask.
    """

    rules: ExamRules
    questions: tuple[str, ...]
    versions: tuple[str, ...]
    earned: np.ndarray
    right: np.ndarray
    counted: np.ndarray
    points: np.ndarray
    codes: tuple[dict[str, int], ...]

    def options(self, q: int) -> tuple[str, ...]:
        return self.rules.questions[self.questions[q]]

    def version_index(self, version: str | None) -> int:
        """The key a sheet of ``version`` is scored with, or -1 when there is none.
        An exam with one key scores a sheet whose version was left blank with it
        (there is no other version it could be); a version the exam does not key
        is never guessed."""
        if self.rules.one_key_for_all or (not version and len(self.versions) == 1):
            return 0
        try:
            return self.versions.index(version)
        except ValueError:
            return -1

    def lowest_score(self) -> float:
        """The least a sheet can score (every question answered at its worst)."""
        worst = 0.0
        for q, options in enumerate(self.rules.questions.values()):
            worst += float(self.earned[:, q, : 1 << len(options)].min())
        return worst


def compile_rules(rules: ExamRules) -> ScoringTables:
    """Tables of what every answer earns on every version and question."""
    questions = tuple(rules.questions)
    versions = tuple(rules.keys)
    earned = np.zeros((len(versions), len(questions), MASKS))
    points = np.array([rules.points[q] for q in questions], dtype=float)
    codes = []
    for q, name in enumerate(questions):
        options = rules.questions[name]
        codes.append(_answer_codes(options))
        if name in rules.dropped:
            earned[:, q, :] = points[q]
            continue
        marking = rules.marking_for(name)
        earned[:, q, :] = np.where(POPCOUNT > 1, marking.multiple, marking.wrong)
        earned[:, q, 0] = marking.blank
        for answer, amount in rules.credit.get(name, {}).items():
            earned[:, q, _mask_of(answer, options)] = amount
        for answer in rules.accepted.get(name, ()):
            earned[:, q, _mask_of(answer, options)] = points[q]
        for v, version in enumerate(versions):
            key = rules.keys[version].get(name)
            if key is not None:
                earned[v, q, _mask_of(key, options)] = points[q]
    right = earned >= points[None, :, None]
    counted = np.array([q not in rules.dropped for q in questions], dtype=bool)
    return ScoringTables(rules, questions, versions, earned, right, counted, points, tuple(codes))


@dataclass(frozen=True, eq=False)
class ScoredSheets:
    """Sheets scored: one row per sheet, one column per exam question.

    ``answers``: option masks (uint8); ``version``: index of the key used, -1
    for a sheet not scored (its version has no key); ``earned``: what each
    answer earned (NaN on a sheet not scored); ``right``: whether it earned the
    question's full points; ``scores``: each sheet's total (NaN when not
    scored), rounded to ``SCORE_DECIMALS``.
    """

    answers: np.ndarray
    version: np.ndarray
    earned: np.ndarray
    right: np.ndarray
    scores: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        return self.version >= 0

    def subset(self, rows: np.ndarray) -> ScoredSheets:
        """These sheets' rows (a boolean mask or indexes): one batch of an exam."""
        return ScoredSheets(self.answers[rows], self.version[rows], self.earned[rows], self.right[rows], self.scores[rows])

    def __len__(self) -> int:
        return len(self.version)


def encode_answers(tables: ScoringTables, sheets: Sequence[Mapping[str, str | None]]) -> np.ndarray:
    """Answer masks (N x questions, uint8) for sheets given as {field: answer as
    read}. A question missing from a sheet, or None (a page not read), counts
    as blank. Answers with their letters in another order (``"DB"``) are
    accepted; anything else raises ``AnswerError`` naming the sheet and field."""
    pairs = list(zip(tables.questions, tables.codes, strict=True))
    rows = []
    for i, sheet in enumerate(sheets):
        get = sheet.get
        row = [codes.get(get(q) or "", -1) for q, codes in pairs]
        if -1 in row:  # an answer not written as the reader writes it: check it alone
            row = [code if code >= 0 else _slow_code(tables, i, j, get(q))
                   for j, (q, code) in enumerate(zip(tables.questions, row, strict=True))]
        rows.append(row)
    return np.array(rows, dtype=np.uint8).reshape(len(rows), len(pairs))


def _slow_code(tables: ScoringTables, sheet: int, q: int, answer: object) -> int:
    options = tables.options(q)
    mask = _mask_of(answer, options) if isinstance(answer, str) else None
    if mask is None:
        raise AnswerError(
            f"sheet {sheet}, {tables.questions[q]}: {answer!r} is not an answer (options {', '.join(options)})"
        )
    return mask


def version_indexes(tables: ScoringTables, versions: Sequence[str | None]) -> np.ndarray:
    """Index of the key each sheet is scored with (-1: none) for sheets whose
    version field read ``versions`` (None or "" when not read)."""
    return np.array([tables.version_index(v) for v in versions], dtype=np.int64)


def score_masks(tables: ScoringTables, answers: np.ndarray, version: np.ndarray) -> ScoredSheets:
    """Score sheets given as option masks (N x questions) and key indexes (N)."""
    answers = np.asarray(answers, dtype=np.uint8)
    version = np.asarray(version, dtype=np.int64)
    n, nq = answers.shape if answers.ndim == 2 else (len(version), len(tables.questions))
    answers = answers.reshape(n, nq)
    if nq != len(tables.questions) or len(version) != n:
        raise ValueError(f"expected {n} sheets x {len(tables.questions)} questions, got {answers.shape} and {version.shape}")
    scored = version >= 0
    row_base = np.where(scored, version, 0)[:, None] * nq + np.arange(nq)[None, :]
    flat = row_base * MASKS + answers
    earned = tables.earned.reshape(-1).take(flat)
    right = tables.right.reshape(-1).take(flat)
    earned[~scored] = np.nan
    right[~scored] = False
    scores = np.round(earned.sum(axis=1), SCORE_DECIMALS)
    return ScoredSheets(answers, version, earned, right, scores)


def score_sheets(
    tables: ScoringTables, sheets: Sequence[Mapping[str, str | None]], versions: Sequence[str | None]
) -> ScoredSheets:
    """Score sheets given as {field: answer as read} with the version each read."""
    if len(sheets) != len(versions):
        raise ValueError(f"{len(sheets)} sheets but {len(versions)} versions")
    return score_masks(tables, encode_answers(tables, sheets), version_indexes(tables, versions))


def score_sheet(tables: ScoringTables, answers: Mapping[str, str | None], version: str | None) -> ScoredSheets:
    """One sheet scored (a one-row ``ScoredSheets``), for a correction."""
    return score_sheets(tables, [answers], [version])


def answer_text(tables: ScoringTables, q: int, mask: int) -> str:
    """The answer a mask stands for, as the reader writes it (``"BD"``, ``""``)."""
    return "".join(o for i, o in enumerate(tables.options(q)) if mask >> i & 1)
