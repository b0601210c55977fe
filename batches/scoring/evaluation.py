"""OMRChecker's ``evaluation.json`` (its answer key and marking) read into an
exam's rules, so that its users keep their keys.

OMRChecker (github.com/Udayraj123/OMRChecker, master) scores the answer read
for each question of ``questions_in_order`` (ranges such as ``q1..11``) against
``answers_in_order`` (``source_type: custom``) or an answer key CSV beside the
file (``source_type: csv``; rows ``question,answer``). An answer item is one
answer (``"B"``, or ``"BC"`` for that double mark), a list of several correct
answers (``["B", "C", "BC"]``), or a list of ``[answer, score]`` pairs (each
answer earns its own score). ``marking_schemes`` gives ``correct``,
``incorrect`` and ``unmarked`` (numbers or strings, fractions like ``"-1/3"``)
for ``DEFAULT`` and for sections of questions of their own.

How that becomes these rules (``docs/scoring.md`` has the table):

- a question's points are its section's ``correct``; its wrong and multiple
  amounts its section's ``incorrect`` (OMRChecker has no separate verdict for
  a multiple mark: one that is not a correct answer is incorrect), its blank
  amount ``unmarked``. DEFAULT's amounts are the exam's; a section whose
  amounts differ gives its questions amounts of their own (``marking``);
- several correct answers become ``accepted`` answers;
- ``[answer, score]`` pairs: the highest score is the question's points and the
  answers that earn it are accepted; the others earn their score (``credit``);
- a section where correct, incorrect and unmarked are equal (OMRChecker's
  ``BONUS_MARKS_FOR_ALL``) drops its questions: everyone gets the points;
- the key is the key of one version (``version``), the only one when the
  template has no version field.

Refused, each with its path: an unknown ``source_type`` (master knows ``csv``
and ``custom``), an answer key to be read from an image, questions that are
not in the template or answers that are not its options, a question whose
full points would not be more than 0, and anything OMRChecker itself refuses
(unequal lengths, overlapping sections, a section naming a question with no
answer).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .rules import ExamRules, ExamRulesError, Marking, canonical_answer, parse_exam_rules

DEFAULT_SECTION = "DEFAULT"
VERDICTS = ("correct", "incorrect", "unmarked")
#: OMRChecker's field strings: a name, or a range ``q1..11`` (two or three dots).
FIELD_STRING_RE = re.compile(r"^([^.]+|[^.\d]+\d+\.{2,3}\d+)$")
FIELD_RANGE_RE = re.compile(r"^([^.\d]+)(\d+)\.{2,3}(\d+)$")
#: Options OMRChecker accepts per source type, and those that only change its own display.
SOURCE_OPTIONS = {
    "csv": {"answer_key_csv_path", "answer_key_image_path", "questions_in_order", "should_explain_scoring"},
    "custom": {"answers_in_order", "questions_in_order", "should_explain_scoring", "enable_evaluation_table_to_csv"},
}


@dataclass(frozen=True)
class ImportedEvaluation:
    """The rules read from an ``evaluation.json``, and what the import noticed
    (answers left out, with their paths) to show beside them."""

    rules: ExamRules
    notes: tuple[str, ...] = ()


class _Reader:
    def __init__(self, questions: Mapping[str, Sequence[str]]):
        self.template = {q: tuple(o) for q, o in questions.items()}
        self.errors: list[str] = []
        self.notes: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def fields(self, path: str, value: Any) -> list[str]:
        """OMRChecker's ``parse_fields``: names and ranges, none twice."""
        strings = [value] if isinstance(value, str) else value
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            self.fail(path, "must be a list of question names or ranges such as \"q1..11\"")
            return []
        names: list[str] = []
        for i, string in enumerate(strings):
            where = f"{path}[{i}]" if isinstance(value, list) else path
            if not FIELD_STRING_RE.match(string):
                self.fail(where, f"{string!r} is not a question name or a range such as \"q1..11\"")
                continue
            match = FIELD_RANGE_RE.match(string)
            if match:
                prefix, start, end = match.group(1), int(match.group(2)), int(match.group(3))
                if start >= end:
                    self.fail(where, f"{string!r}: the range must go up ({start} is not less than {end})")
                    continue
                expanded = [f"{prefix}{n}" for n in range(start, end + 1)]
            else:
                expanded = [string]
            twice = [q for q in expanded if q in names]
            if twice:
                self.fail(where, f"{string!r} names {', '.join(twice)} again")
                continue
            names.extend(expanded)
        return names

    def score(self, path: str, value: Any) -> float | None:
        """OMRChecker's ``parse_float_or_fraction``: a number, or a string such as "3", "-1/3", "0.25"."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(Fraction(value.strip()))
            except (ValueError, ZeroDivisionError):
                pass
        self.fail(path, f"must be a number or a fraction such as \"-1/3\", not {value!r}")
        return None

    def marking(self, path: str, value: Any) -> dict[str, float] | None:
        if not isinstance(value, Mapping) or set(value) != set(VERDICTS):
            self.fail(path, f"must be an object with exactly {', '.join(VERDICTS)}")
            return None
        scores = {v: self.score(f"{path}.{v}", value[v]) for v in VERDICTS}
        if None in scores.values():
            return None
        return scores  # type: ignore[return-value]

    def answer(self, path: str, question: str, answer: Any) -> str | None:
        options = self.template[question]
        canonical = canonical_answer(answer, options) if isinstance(answer, str) and answer else None
        if canonical is None:
            self.fail(path, f"{answer!r} is not an answer to {question} (options {', '.join(options)})")
        return canonical

    def alternative(self, path: str, question: str, answer: Any) -> str | None:
        """One of several right answers: one that the template cannot read
        (``"E"`` on a four-option question) could never be matched by OMRChecker
        either, so it is left out with a note rather than refusing the key."""
        options = self.template[question]
        canonical = canonical_answer(answer, options) if isinstance(answer, str) and answer else None
        if canonical is None:
            self.notes.append(f"{path}: {answer!r} is not an answer to {question} (options {', '.join(options)}); "
                              "it can never be read, so it is left out")
        return canonical


def import_evaluation(
    evaluation: Any,
    *,
    questions: Mapping[str, Sequence[str]],
    versions: Sequence[str] | None = None,
    version: str | None = None,
    read_answer_key: Callable[[str], str] | None = None,
) -> ImportedEvaluation:
    """Rules from a parsed ``evaluation.json``.

    ``questions``: the template's question names -> options; ``versions``: its
    version field's values (None: no version field); ``version``: the version
    the key is for (default the first, "A" without a version field);
    ``read_answer_key(path)``: the text of the answer key CSV named by
    ``answer_key_csv_path`` (``source_type: csv``). Raises ``ExamRulesError``
    naming each problem by its path in the file.
    """
    r = _Reader(questions)
    if not isinstance(evaluation, Mapping):
        raise ExamRulesError(["must be a JSON object"])
    for key in ("source_type", "options", "marking_schemes"):
        if key not in evaluation:
            r.fail(key, "is required")
    if r.errors:
        raise ExamRulesError(r.errors)
    source, options = evaluation["source_type"], evaluation["options"]
    if not isinstance(source, str) or source not in SOURCE_OPTIONS:
        raise ExamRulesError([f"source_type: must be \"csv\" or \"custom\", not {source!r}"])
    if not isinstance(options, Mapping):
        raise ExamRulesError(["options: must be an object"])
    for key in sorted(set(options) - SOURCE_OPTIONS[source]):
        r.fail(f"options.{key}", f"is not an option of source_type {source!r}")

    if source == "custom":
        order, answers, places = _custom_key(r, options)
    else:
        order, answers, places = _csv_key(r, options, read_answer_key)
    if r.errors:
        raise ExamRulesError(r.errors)

    for question, place in zip(order, places, strict=True):
        if question not in r.template:
            r.fail(place, f"{question} is not a question of the template")

    sections = _sections(r, evaluation["marking_schemes"], set(order))
    if r.errors:
        raise ExamRulesError(r.errors)
    default = sections.pop(DEFAULT_SECTION)[0]
    scheme_of = {q: (name, marking) for name, (marking, qs) in sections.items() for q in qs}

    chosen = version if version is not None else (versions[0] if versions else "A")
    if versions is not None and chosen not in versions:
        raise ExamRulesError([f"version: {chosen!r} is not one of the sheet's versions ({', '.join(versions)})"])
    data = _rules_json(r, order, answers, places, default, scheme_of, chosen)
    if r.errors:
        raise ExamRulesError(r.errors)
    try:
        return ImportedEvaluation(parse_exam_rules(data, questions=questions, versions=versions), tuple(r.notes))
    except ExamRulesError as error:  # not expected once the file is checked above
        raise ExamRulesError([f"as exam rules: {e}" for e in error.errors]) from None


def load_evaluation(
    path: str | Path,
    *,
    questions: Mapping[str, Sequence[str]],
    versions: Sequence[str] | None = None,
    version: str | None = None,
) -> ImportedEvaluation:
    """Rules from an ``evaluation.json`` file and the answer key CSV beside it
    (a CSV path leading out of the file's folder is refused)."""
    path = Path(path)
    folder = path.parent.resolve()
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExamRulesError([f"{path.name}: cannot be read as JSON ({error})"]) from None

    def read_answer_key(relative: str) -> str:
        csv_path = (folder / relative).resolve()
        if not csv_path.is_relative_to(folder):
            raise ExamRulesError([f"options.answer_key_csv_path: {relative!r} leads out of the evaluation's folder"])
        return csv_path.read_text(encoding="utf-8-sig")

    return import_evaluation(
        evaluation, questions=questions, versions=versions, version=version, read_answer_key=read_answer_key
    )


def _custom_key(r: _Reader, options: Mapping) -> tuple[list[str], list[Any], list[str]]:
    for key in ("questions_in_order", "answers_in_order"):
        if key not in options:
            r.fail(f"options.{key}", "is required for source_type \"custom\"")
    if r.errors:
        return [], [], []
    order = r.fields("options.questions_in_order", options["questions_in_order"])
    answers = options["answers_in_order"]
    if not isinstance(answers, list):
        r.fail("options.answers_in_order", "must be a list")
        return [], [], []
    if not order and not r.errors:
        r.fail("options.questions_in_order", "names no question")
        return [], [], []
    if len(order) != len(answers):
        r.fail("options.answers_in_order", f"has {len(answers)} answers for {len(order)} questions in order")
        return [], [], []
    return order, answers, [f"options.answers_in_order[{i}]" for i in range(len(answers))]


def _csv_key(
    r: _Reader, options: Mapping, read_answer_key: Callable[[str], str] | None
) -> tuple[list[str], list[Any], list[str]]:
    name = options.get("answer_key_csv_path")
    if not isinstance(name, str) or not name:
        if "answer_key_image_path" in options:
            r.fail("options.answer_key_image_path", "reading the answer key from an image is not supported: "
                   "give the key as a CSV in answer_key_csv_path")
        else:
            r.fail("options.answer_key_csv_path", "is required for source_type \"csv\"")
        return [], [], []
    if read_answer_key is None:
        r.fail("options.answer_key_csv_path", f"the answer key {name!r} was not given")
        return [], [], []
    try:
        text = read_answer_key(name)
    except (OSError, UnicodeDecodeError) as error:
        reason = "not found" if isinstance(error, FileNotFoundError) else f"cannot be read ({error})"
        r.fail("options.answer_key_csv_path", f"{name!r}: {reason}")
        return [], [], []
    order, answers, places = [], [], []
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue  # blank lines are skipped, as pandas does
        place = f"{name} line {line}"
        if len(row) != 2:
            r.fail(place, f"must be question,answer (found {len(row)} columns)")
            continue
        question, answer = row[0].strip(), _answer_column(r, place, row[1].strip())
        if question in order:
            r.fail(place, f"{question} is given twice")
            continue
        order.append(question)
        answers.append(answer)
        places.append(place)
    if not order and not r.errors:
        r.fail(name, "holds no answers")
    return order, answers, places


def _answer_column(r: _Reader, place: str, text: str) -> Any:
    """OMRChecker's ``parse_answer_column``: ``[...]`` a Python literal, ``A,B``
    several correct answers, anything else one answer."""
    if text.startswith("["):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            r.fail(place, f"{text!r} is not a list such as ['A', 'B'] or [['A', 1], ['B', 2]]")
            return None
    if "," in text:
        return [part.strip() for part in text.split(",")]
    return text


def _sections(
    r: _Reader, schemes: Any, in_order: set[str]
) -> dict[str, tuple[dict[str, float] | None, list[str]]]:
    if not isinstance(schemes, Mapping) or DEFAULT_SECTION not in schemes:
        r.fail("marking_schemes", f"must be an object with a {DEFAULT_SECTION} scheme")
        return {}
    sections: dict[str, tuple[dict[str, float] | None, list[str]]] = {}
    seen: dict[str, str] = {}
    for name, scheme in schemes.items():
        path = f"marking_schemes.{name}"
        if name == DEFAULT_SECTION:
            sections[name] = (r.marking(path, scheme), [])
            continue
        if not isinstance(scheme, Mapping) or set(scheme) != {"questions", "marking"}:
            r.fail(path, "must be an object with exactly questions and marking")
            continue
        questions = r.fields(f"{path}.questions", scheme["questions"])
        for q in questions:
            if q in seen:
                r.fail(f"{path}.questions", f"{q} is already in section {seen[q]}")
            elif q not in in_order:
                r.fail(f"{path}.questions", f"{q} has no answer in the key")
            seen.setdefault(q, name)
        sections[name] = (r.marking(f"{path}.marking", scheme["marking"]), questions)
    return sections


def _rules_json(
    r: _Reader,
    order: list[str],
    answers: list[Any],
    places: list[str],
    default: dict[str, float],
    scheme_of: dict[str, tuple[str, dict[str, float]]],
    version: str,
) -> dict[str, Any]:
    """The exam rules' JSON for the checked key and schemes."""
    exam_marking = Marking(wrong=default["incorrect"], blank=default["unmarked"], multiple=default["incorrect"])
    data: dict[str, Any] = {
        "keys": {version: {}}, "points": {}, "wrong": exam_marking.wrong, "blank": exam_marking.blank,
        "multiple": exam_marking.multiple, "accepted": {}, "dropped": [], "marking": {}, "credit": {},
    }
    for question, item, place in zip(order, answers, places, strict=True):
        if question not in r.template:
            continue
        section, marking = scheme_of.get(question, (DEFAULT_SECTION, default))
        scheme_path = "marking_schemes.DEFAULT" if section == DEFAULT_SECTION else f"marking_schemes.{section}.marking"
        kind = _answer_kind(item)
        if kind is None:
            r.fail(place, f"{item!r} is not an answer, a list of 2 or more answers, or a list of [answer, score] pairs")
            continue
        if kind == "weighted":
            weights = {}
            for i, (answer, score) in enumerate(item):
                canonical = r.alternative(f"{place}[{i}][0]", question, answer)
                value = r.score(f"{place}[{i}][1]", score)
                if canonical is not None and value is not None:
                    weights[canonical] = value
            if not weights:
                r.fail(place, f"none of these answers can be read on {question} (options {', '.join(r.template[question])})")
                continue
            points = max(weights.values())
            if points <= 0:
                r.fail(place, f"no answer earns more than 0 (highest {points:g}), so none can be right")
                continue
            data["accepted"][question] = [a for a, w in weights.items() if w == points]
            partial = {a: w for a, w in weights.items() if w != points}
            if partial:
                data["credit"][question] = partial
        else:
            points = marking["correct"]
            if marking["correct"] == marking["incorrect"] == marking["unmarked"]:
                if points <= 0:
                    r.fail(f"{scheme_path}.correct", f"everyone gets {points:g}: only more than 0 can be given to all")
                    continue
                data["dropped"].append(question)
            elif points <= 0:
                r.fail(f"{scheme_path}.correct", f"must be more than 0 for {question} to have a right answer")
                continue
            if kind == "one":
                canonical = r.answer(place, question, item)
                if canonical is not None:
                    data["keys"][version][question] = canonical
            else:
                readable = [r.alternative(f"{place}[{i}]", question, a) for i, a in enumerate(item)]
                readable = [a for a in readable if a is not None]
                if not readable:
                    r.fail(place, f"none of these answers can be read on {question} (options {', '.join(r.template[question])})")
                    continue
                data["accepted"][question] = readable
        data["points"][question] = points
        own = Marking(wrong=marking["incorrect"], blank=marking["unmarked"], multiple=marking["incorrect"])
        if own != exam_marking and question not in data["dropped"]:
            data["marking"][question] = {"wrong": own.wrong, "blank": own.blank, "multiple": own.multiple}
    return data


def _answer_kind(item: Any) -> str | None:
    """OMRChecker's answer types: one answer, several correct ones, or weighted."""
    if isinstance(item, str) and item:
        return "one"
    if isinstance(item, list):
        if len(item) >= 2 and all(isinstance(a, str) and a for a in item):
            return "several"
        if item and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]
            and isinstance(pair[1], (str, int, float)) and not isinstance(pair[1], bool)
            for pair in item
        ):
            return "weighted"
    return None
