"""An exam's answer keys and scoring rules, read and checked from the API's JSON.

The JSON (``POST /api/exams``)::

    {"keys": {"A": {"q1": "B", ...}, "B": {...}}, "points": {"q1": 2, "q2": 0.5},
     "wrong": -0.25, "blank": 0, "multiple": 0,
     "accepted": {"q3": ["A", "C"], "q9": ["BD"]}, "dropped": ["q7"]}

- ``points`` (may be fractional, more than 0) defaults to 1 a question.
- An answer is right when it equals the version's key or one of the question's
  ``accepted`` answers (answers as read: ``"C"``, or ``"BD"`` for that double
  mark; the same on every version). A right answer earns the question's points.
- Otherwise a blank earns ``blank``, a multiple mark (more than one option)
  ``multiple``, any other answer ``wrong``: fixed amounts (default 0), not
  scaled by the points.
- A dropped question gives everyone its points.
- ``max_score`` is the sum of the exam's questions' points.

The exam's questions are the ones a key, ``accepted`` or ``dropped`` names (a
template with 50 questions can carry a 30-question exam); every one of them
that is not dropped must have a key on every version, or accepted answers.

Two optional fields carry what an OMRChecker ``evaluation.json`` can say and
the fields above cannot (they come back from ``to_json`` so that an exam read
back and sent again keeps its rules):

- ``marking``: ``{"q5": {"wrong": -2, "blank": 0, "multiple": -2}}``, that
  question's own amounts (a field left out takes the exam's).
- ``credit``: ``{"q1": {"C": -2, "B": 1.5}}``, answers that earn an amount of
  their own without being right (less than the question's points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The JSON fields these rules are read from; the exam's other fields (name,
#: template) are the server's.
RULE_FIELDS = ("keys", "points", "wrong", "blank", "multiple", "accepted", "dropped", "marking", "credit")
MARKING_FIELDS = ("wrong", "blank", "multiple")


class ExamRulesError(ValueError):
    """Rules that cannot be used; ``errors`` names each problem by its path in
    the JSON (``keys.E: unknown version 'E' ...``)."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid exam rules: " + "; ".join(errors))


@dataclass(frozen=True)
class Marking:
    """What an answer that is not right earns, whatever the question's points."""

    wrong: float = 0.0
    blank: float = 0.0
    multiple: float = 0.0


def answer_options(answer: str, options: Sequence[str]) -> tuple[int, ...] | None:
    """The indexes (in option order) of the options an answer marks: ``""`` ->
    ``()``, ``"BD"`` -> ``(1, 3)``; None when ``answer`` is not an answer to a
    question with these ``options``. One-character options may come in any
    order (``"DB"`` is ``"BD"``), each at most once; longer labels are read in
    option order (``"YesNo"``)."""
    if answer == "":
        return ()
    if all(len(o) == 1 for o in options):
        picked = {options.index(ch) for ch in answer if ch in options}
        if len(picked) != len(answer):
            return None
        return tuple(sorted(picked))
    chosen: list[int] = []
    rest = answer
    for i, option in enumerate(options):
        if rest.startswith(option):
            chosen.append(i)
            rest = rest[len(option):]
    return tuple(chosen) if chosen and rest == "" else None


def canonical_answer(answer: str, options: Sequence[str]) -> str | None:
    """``answer`` written as the reader writes it (options in printed order), or
    None when it is not an answer to these options."""
    picked = answer_options(answer, options)
    return None if picked is None else "".join(options[i] for i in picked)


@dataclass(frozen=True)
class ExamRules:
    """An exam's keys and scoring rules, checked against its template.

    ``questions``: the exam's questions in template order -> their options;
    ``keys``: version -> {question: answer as read}; ``points``: every exam
    question's points; ``marking``: the exam's wrong/blank/multiple amounts;
    ``question_marking``: questions with amounts of their own; ``credit``:
    question -> {answer: amount} for answers that earn something without being
    right; ``one_key_for_all``: the template has no version field, so the one
    key scores every sheet.
    """

    questions: dict[str, tuple[str, ...]]
    keys: dict[str, dict[str, str]]
    points: dict[str, float]
    marking: Marking = Marking()
    accepted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    question_marking: dict[str, Marking] = field(default_factory=dict)
    credit: dict[str, dict[str, float]] = field(default_factory=dict)
    one_key_for_all: bool = False

    @property
    def max_score(self) -> float:
        return float(sum(self.points.values()))

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(self.keys)

    def marking_for(self, question: str) -> Marking:
        return self.question_marking.get(question, self.marking)

    def to_json(self) -> dict[str, Any]:
        """The rules as the API gives them back (and takes them again)."""
        data: dict[str, Any] = {
            "keys": {v: dict(k) for v, k in self.keys.items()},
            "points": dict(self.points),
            "wrong": self.marking.wrong,
            "blank": self.marking.blank,
            "multiple": self.marking.multiple,
            "accepted": {q: list(a) for q, a in self.accepted.items()},
            "dropped": list(self.dropped),
        }
        if self.question_marking:
            data["marking"] = {
                q: {"wrong": m.wrong, "blank": m.blank, "multiple": m.multiple} for q, m in self.question_marking.items()
            }
        if self.credit:
            data["credit"] = {q: dict(c) for q, c in self.credit.items()}
        return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class _Reader:
    """Reads the rules' JSON, collecting every problem by its path."""

    def __init__(self, questions: Mapping[str, Sequence[str]]):
        self.template = {q: tuple(o) for q, o in questions.items()}
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def question(self, path: str, name: Any) -> str | None:
        if not isinstance(name, str) or name not in self.template:
            self.fail(path, f"unknown question {name!r}")
            return None
        return name

    def answer(self, path: str, question: str, answer: Any) -> str | None:
        options = self.template[question]
        if not isinstance(answer, str):
            self.fail(path, f"must be an answer such as {options[0]!r}, not {answer!r}")
            return None
        if answer == "":
            self.fail(path, "must not be blank (a question no one can get right is dropped instead)")
            return None
        canonical = canonical_answer(answer, options)
        if canonical is None:
            self.fail(path, f"{answer!r} is not an answer to {question} (options {', '.join(options)})")
        return canonical

    def amount(self, path: str, value: Any) -> float | None:
        number = _number(value)
        if number is None:
            self.fail(path, f"must be a number, not {value!r}")
        return number

    def mapping(self, data: Mapping, key: str, default: Any) -> Any:
        value = data.get(key)
        if value is None:  # left out, or null: the default
            return default
        if not isinstance(value, Mapping):
            self.fail(key, "must be an object")
            return default
        return value


def parse_exam_rules(
    data: Any, *, questions: Mapping[str, Sequence[str]], versions: Sequence[str] | None
) -> ExamRules:
    """Read and check the rules of the API's exam JSON.

    ``questions``: the template's question names (in template order) -> their
    option labels; ``versions``: the values of the template's version field,
    or None when it has none (then one key scores every sheet). Fields other
    than ``RULE_FIELDS`` are left to the caller. Raises ``ExamRulesError``
    listing every problem by its JSON path.
    """
    if not isinstance(data, Mapping):
        raise ExamRulesError(["must be a JSON object"])
    r = _Reader(questions)

    keys: dict[str, dict[str, str]] = {}
    raw_keys = data.get("keys")
    if not isinstance(raw_keys, Mapping) or not raw_keys:
        r.fail("keys", "must be an object with one answer key per version, such as {\"A\": {\"q1\": \"B\"}}")
        raw_keys = {}
    if versions is None and len(raw_keys) > 1:
        r.fail("keys", f"the template has no version field, so the exam takes one key, not {len(raw_keys)}")
    for version, key in raw_keys.items():
        path = f"keys.{version}"
        if versions is not None and version not in versions:
            r.fail(path, f"unknown version {version!r} (the sheet's versions are {', '.join(versions)})")
            continue
        if not isinstance(key, Mapping):
            r.fail(path, "must be an object {question: answer}")
            continue
        keys[version] = {}
        for question, answer in key.items():
            if r.question(f"{path}.{question}", question) is None:
                continue
            canonical = r.answer(f"{path}.{question}", question, answer)
            if canonical is not None:
                keys[version][question] = canonical

    accepted: dict[str, tuple[str, ...]] = {}
    for question, answers in r.mapping(data, "accepted", {}).items():
        path = f"accepted.{question}"
        if r.question(path, question) is None:
            continue
        if not isinstance(answers, list) or not answers:
            r.fail(path, "must be a list of answers, such as [\"A\", \"BD\"]")
            continue
        parsed = [r.answer(f"{path}[{i}]", question, a) for i, a in enumerate(answers)]
        accepted[question] = tuple(dict.fromkeys(a for a in parsed if a is not None))

    dropped: set[str] = set()
    raw_dropped = data.get("dropped")
    raw_dropped = [] if raw_dropped is None else raw_dropped
    if not isinstance(raw_dropped, list):
        r.fail("dropped", "must be a list of question names")
        raw_dropped = []
    for i, question in enumerate(raw_dropped):
        if r.question(f"dropped[{i}]", question) is not None:
            dropped.add(question)

    marking = Marking(*(_amount_or_default(r, data, name, 0.0) for name in MARKING_FIELDS))

    credit: dict[str, dict[str, float]] = {}
    for question, answers in r.mapping(data, "credit", {}).items():
        path = f"credit.{question}"
        if r.question(path, question) is None:
            continue
        if not isinstance(answers, Mapping) or not answers:
            r.fail(path, "must be an object {answer: amount}")
            continue
        credit[question] = {}
        for answer, amount in answers.items():
            canonical = r.answer(f"{path}.{answer}", question, answer)
            value = r.amount(f"{path}.{answer}", amount)
            if canonical is not None and value is not None:
                credit[question][canonical] = value

    in_exam = {q for key in keys.values() for q in key} | set(accepted) | dropped | set(credit)
    exam_questions = {q: options for q, options in r.template.items() if q in in_exam}
    if not exam_questions and not r.errors:
        r.fail("keys", "name no question: an exam needs at least one")

    points: dict[str, float] = dict.fromkeys(exam_questions, 1.0)
    for question, value in r.mapping(data, "points", {}).items():
        path = f"points.{question}"
        if r.question(path, question) is None:
            continue
        if question not in exam_questions:
            r.fail(path, f"{question} is not in the exam (no key, accepted answer or drop names it)")
            continue
        number = _number(value)
        if number is None or number <= 0:
            r.fail(path, f"must be a number more than 0, not {value!r}")
            continue
        points[question] = number

    question_marking: dict[str, Marking] = {}
    for question, amounts in r.mapping(data, "marking", {}).items():
        path = f"marking.{question}"
        if r.question(path, question) is None:
            continue
        if question not in exam_questions:
            r.fail(path, f"{question} is not in the exam (no key, accepted answer or drop names it)")
            continue
        if not isinstance(amounts, Mapping) or set(amounts) - set(MARKING_FIELDS):
            r.fail(path, f"must be an object with some of {', '.join(MARKING_FIELDS)}")
            continue
        question_marking[question] = Marking(
            *(_amount_or_default(r, amounts, name, getattr(marking, name), path) for name in MARKING_FIELDS)
        )

    for question, answers in credit.items():
        for answer, amount in answers.items():
            path = f"credit.{question}.{answer}"
            if amount >= points[question]:
                r.fail(path, f"{amount:g} is the question's full points or more: list {answer!r} in accepted instead")
            elif answer in accepted.get(question, ()) or any(key.get(question) == answer for key in keys.values()):
                r.fail(path, f"{answer!r} is already a right answer to {question}")

    for question in exam_questions:
        if question in dropped or question in accepted:
            continue
        for version, key in keys.items():
            if question not in key:
                r.fail(f"keys.{version}", f"no key for {question}, which is scored and has no accepted answer")

    if r.errors:
        raise ExamRulesError(r.errors)
    return ExamRules(
        questions=exam_questions,
        keys=keys,
        points=points,
        marking=marking,
        accepted={q: accepted[q] for q in exam_questions if q in accepted},
        dropped=tuple(q for q in exam_questions if q in dropped),
        question_marking={q: question_marking[q] for q in exam_questions if q in question_marking},
        credit={q: credit[q] for q in exam_questions if q in credit},
        one_key_for_all=versions is None,
    )


def _amount_or_default(r: _Reader, data: Mapping, name: str, default: float, prefix: str = "") -> float:
    if data.get(name) is None:  # left out, or null: the default
        return default
    value = r.amount(f"{prefix}.{name}" if prefix else name, data[name])
    return default if value is None else value
