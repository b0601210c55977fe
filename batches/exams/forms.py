"""The exam pages' forms: an exam's name, template, keys and rules as a
person types them, turned into the API's JSON for ``services``; and a roster
file.

Keys are typed as one compact string per version: ``BDCAB DCABD ...``, one
letter a question in template order (spaces and commas only group them), a
double mark in brackets (``(BD)``), ``.`` (or ``-``, ``_``) for a question
left out of that key. Points, accepted answers and dropped questions are short
lists: ``q1=2, q2=0.5``; ``q3=A/C, q9=BD``; ``q7 q12`` (a plain number is the
template's question of that rank). The services check everything against the
template; their errors come back by JSON path (``keys.A.q2: ...``) and are
shown under the field they belong to.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.conf import settings

from ..web.forms import template_choices
from .templates import ExamTemplate, exam_template

NO_KEY = {".", "-", "_"}
SEPARATORS = re.compile(r"[\s,;]+")
NO_KEY_FOR = re.compile(r"no key for (\S+), which is scored and has no accepted answer$")
EVALUATION_MAX_BYTES = 1024 * 1024
PER_QUESTION_MAX = 50  # templates up to this many questions can be keyed question by question
ROSTER_MAX_BYTES = 10 * 1024 * 1024


def key_field(version: str) -> str:
    return f"key_{version}"


def cell_field(version: str, question: str) -> str:
    """A key typed question by question: one field per version and question."""
    return f"key_{version}__{question}"


def template_shape(name: str | None) -> ExamTemplate | None:
    try:
        return exam_template(name) if name else None
    except (FileNotFoundError, ValueError):
        return None


def key_versions(shape: ExamTemplate | None, rules: dict | None = None) -> list[str]:
    """The versions a key can be typed for: the template's version values, or
    one key (named as the exam names it, else ``A``) for a template without."""
    if shape is None:
        return []
    if shape.versions is not None:
        return list(shape.versions)
    named = list((rules or {}).get("keys") or {})
    return named[:1] or ["A"]


# ---------------------------------------------------------------- typed text -> JSON


def parse_key(text: str, questions: list[str]) -> tuple[dict[str, str], list[str]]:
    """A compact key (``BDCAB DCA(BD)``) as {question: answer}, and problems.
    Spaces and commas only group the letters; a double mark is in brackets."""
    tokens, problems = [], []
    compact = re.sub(r"[\s,;]+", "", text or "")
    i = 0
    while i < len(compact):
        if compact[i] in "([":
            close = compact.find(")" if compact[i] == "(" else "]", i + 1)
            if close < 0:
                return {}, [f"the “{compact[i]}” after answer {len(tokens)} is not closed"]
            tokens.append(compact[i + 1:close])
            i = close + 1
        else:
            tokens.append(compact[i])
            i += 1
    if len(tokens) > len(questions):
        problems.append(f"{len(tokens)} answers, but the template has {len(questions)} questions")
        return {}, problems
    return {q: t.upper() for q, t in zip(questions, tokens, strict=False) if t not in NO_KEY and t}, problems


def _question(token: str, questions: list[str]) -> str:
    if token.isdigit() and token not in questions and 1 <= int(token) <= len(questions):
        return questions[int(token) - 1]
    return token


def parse_pairs(text: str, questions: list[str], what: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``q1=2, q2=0.5`` as [(question, value)] and problems."""
    pairs, errors = [], []
    for token in (t for t in SEPARATORS.split((text or "").strip()) if t):
        name, sep, value = token.partition("=")
        if not sep or not name or not value:
            errors.append(f"“{token}” should be a question, “=” and {what}, as in q1={'2' if what == 'points' else 'A/C'}")
            continue
        pairs.append((_question(name, questions), value))
    return pairs, errors


def parse_points(text: str, questions: list[str]) -> tuple[dict[str, Any], list[str]]:
    pairs, errors = parse_pairs(text, questions, "points")
    points: dict[str, Any] = {}
    for q, value in pairs:
        try:
            points[q] = float(value)
        except ValueError:
            errors.append(f"{q}: “{value}” is not a number")
    return points, errors


def parse_accepted(text: str, questions: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    pairs, errors = parse_pairs(text, questions, "answers")
    return {q: [a.upper() for a in re.split(r"[/|]", value) if a] for q, value in pairs}, errors


def parse_dropped(text: str, questions: list[str]) -> list[str]:
    return [_question(t, questions) for t in SEPARATORS.split((text or "").strip()) if t]


def question_ranges(names: list[str], questions: list[str]) -> str:
    """``q4–q20, q23`` for questions that follow each other in the template."""
    rank = {q: i for i, q in enumerate(questions)}
    runs: list[list[str]] = []
    for name in sorted(names, key=lambda n: rank.get(n, len(rank))):
        if runs and name in rank and runs[-1][-1] in rank and rank[name] == rank[runs[-1][-1]] + 1:
            runs[-1].append(name)
        else:
            runs.append([name])
    return ", ".join(", ".join(run) if len(run) < 3 else f"{run[0]}–{run[-1]}" for run in runs)


# ---------------------------------------------------------------- JSON -> typed text


def key_text(key: dict[str, str], questions: list[str]) -> str:
    """A key as typed: one letter a question, a double mark in brackets,
    ``.`` for a question left out, in groups of five."""
    tokens = [key.get(q, ".") for q in questions]
    while tokens and tokens[-1] == ".":
        tokens.pop()
    tokens = [t if len(t) == 1 else f"({t})" for t in tokens]
    return " ".join("".join(tokens[i:i + 5]) for i in range(0, len(tokens), 5))


def _number(value: float) -> str:
    return f"{value:g}"


def initial_from_exam(exam) -> dict[str, Any]:
    """The form's fields for an exam as stored."""
    rules = exam.rules or {}
    shape = template_shape(exam.template)
    questions = list(shape.questions) if shape else []
    initial: dict[str, Any] = {
        "name": exam.name, "template": exam.template,
        "points": ", ".join(f"{q}={_number(v)}" for q, v in (rules.get("points") or {}).items() if v != 1),
        "wrong": rules.get("wrong", 0), "blank": rules.get("blank", 0), "multiple": rules.get("multiple", 0),
        "accepted": ", ".join(f"{q}={'/'.join(a)}" for q, a in (rules.get("accepted") or {}).items()),
        "dropped": ", ".join(rules.get("dropped") or []),
    }
    for version, key in (rules.get("keys") or {}).items():
        initial[key_field(version)] = key_text(key, questions)
    return initial


# ---------------------------------------------------------------- the forms


class ExamForm(forms.Form):
    """An exam: name, template, a key per version and the rules, or an
    OMRChecker evaluation.json instead of the keys and rules."""

    name = forms.CharField(label="Name", max_length=200)
    template = forms.ChoiceField(label="Sheet template", choices=template_choices)
    points = forms.CharField(
        label="Points", required=False,
        help_text="Questions worth other than 1 point, as in “q1=2, q2=0.5”.")
    wrong = forms.FloatField(label="A wrong answer earns", initial=0, required=False,
                             help_text="A fixed amount, not scaled by the points: -0.25 for negative marking.")
    blank = forms.FloatField(label="A blank earns", initial=0, required=False)
    multiple = forms.FloatField(label="A multiple mark earns", initial=0, required=False)
    accepted = forms.CharField(
        label="Also accepted", required=False,
        help_text="Other answers counted right on every version, as in “q3=A/C, q9=BD” (BD: that double mark).")
    dropped = forms.CharField(
        label="Dropped questions", required=False,
        help_text="Questions everyone gets the points of, as in “q7, q12”.")
    evaluation = forms.FileField(
        label="Or import an OMRChecker evaluation.json", required=False,
        help_text="Its answers and marking schemes replace the keys and rules typed above.")
    answer_key_csv = forms.FileField(label="Its answer key CSV", required=False,
                                     help_text="Only when the evaluation.json names an answer_key_csv_path.")
    evaluation_version = forms.CharField(label="Version it keys", required=False, max_length=16,
                                         help_text="Default: the template's first version.")

    def __init__(self, *args, exam=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.exam = exam
        chosen = self.data.get("template") if self.is_bound else None
        chosen = chosen or self.initial.get("template") or (exam.template if exam else settings.OMR_DEFAULT_TEMPLATE)
        if not self.is_bound and "template" not in self.initial:
            self.initial["template"] = chosen
        self.shape = template_shape(chosen)
        self.questions = list(self.shape.questions) if self.shape else []
        self.options_text = ", ".join(next(iter(self.shape.questions.values()), ())) if self.shape else ""
        self.versions = key_versions(self.shape, exam.rules if exam else None)
        entry = (self.data if self.is_bound else self.initial).get("entry")
        self.can_key_per_question = 0 < len(self.questions) <= PER_QUESTION_MAX
        self.per_question = entry == "questions" and self.can_key_per_question
        if self.per_question:
            self._add_cells()
            self.key_names = []
            return
        for version in self.versions:
            label = f"Key of version {version}" if self.shape.versions is not None else "Key"
            self.fields[key_field(version)] = forms.CharField(
                label=label, required=False, widget=forms.TextInput(attrs={"class": "key-input", "spellcheck": "false",
                                                                           "autocomplete": "off"}))
            if not self.is_bound and key_field(version) not in self.initial:
                # back from typing question by question
                typed = {q: self.initial.get(cell_field(version, q), "").strip().upper() for q in self.questions}
                self.initial[key_field(version)] = key_text({q: a for q, a in typed.items() if a}, self.questions)
        self.key_names = [key_field(v) for v in self.versions]

    def _add_cells(self) -> None:
        """One small field per question and version, filled from the compact
        keys when the page switches to this way of typing."""
        for version in self.versions:
            compact, _problems = parse_key(self.initial.get(key_field(version), ""), self.questions)
            for q in self.questions:
                name = cell_field(version, q)
                self.fields[name] = forms.CharField(
                    label=f"{q}, version {version}" if self.shape.versions is not None else q, required=False,
                    max_length=10)
                if not self.is_bound and name not in self.initial and q in compact:
                    self.initial[name] = compact[q]
        self.grid = [(q, [self[cell_field(v, q)] for v in self.versions]) for q in self.questions]

    def key_fields(self):
        return [self[name] for name in self.key_names]

    def clean_evaluation(self):
        upload = self.cleaned_data.get("evaluation")
        if not upload:
            return None
        if upload.size > EVALUATION_MAX_BYTES:
            raise forms.ValidationError("The file is over 1 MB; an evaluation.json is much smaller.")
        try:
            return json.loads(upload.read().decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise forms.ValidationError(f"“{upload.name}” is not a JSON file ({exc}).") from None

    def clean_answer_key_csv(self):
        upload = self.cleaned_data.get("answer_key_csv")
        if not upload:
            return None
        try:
            return upload.read(EVALUATION_MAX_BYTES).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise forms.ValidationError(f"“{upload.name}” is not a text file.") from None

    def clean(self):
        data = super().clean()
        if data.get("evaluation") is not None:
            return data
        keys = {}
        for version in self.versions:
            if self.per_question:
                typed = {q: (data.get(cell_field(version, q)) or "").strip(" ()[]").upper() for q in self.questions}
                key, problems = {q: a for q, a in typed.items() if a and a not in NO_KEY}, []
            else:
                key, problems = parse_key(data.get(key_field(version), ""), self.questions)
            for problem in problems:
                self.add_error(key_field(version), problem)
            if key:
                keys[version] = key
        data["keys"] = keys
        if not keys and not any(key_field(v) in self.errors for v in self.versions):
            self.add_error(self.key_names[0] if self.key_names else None,
                           "Type the key of at least one version, or import an evaluation.json.")
        data["points_map"], problems = parse_points(data.get("points", ""), self.questions)
        for problem in problems:
            self.add_error("points", problem)
        data["accepted_map"], problems = parse_accepted(data.get("accepted", ""), self.questions)
        for problem in problems:
            self.add_error("accepted", problem)
        data["dropped_list"] = parse_dropped(data.get("dropped", ""), self.questions)
        return data

    def exam_json(self) -> dict[str, Any]:
        """The API's JSON for the services (call after ``is_valid``)."""
        return self.exam_json_of(self.cleaned_data)

    def exam_json_of(self, data: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"name": data["name"], "template": data["template"]}
        if data.get("evaluation") is not None:
            body.update(evaluation=data["evaluation"], answer_key_csv=data.get("answer_key_csv"),
                        version=data.get("evaluation_version") or None)
            return body
        body.update(keys=data["keys"], points=data["points_map"], accepted=data["accepted_map"],
                    dropped=data["dropped_list"])
        for amount in ("wrong", "blank", "multiple"):
            body[amount] = data.get(amount) or 0.0
        if self.exam is not None:
            # What only an evaluation.json can say stays as imported.
            for extra in ("marking", "credit"):
                if self.exam.rules.get(extra):
                    body[extra] = self.exam.rules[extra]
        return body

    def add_service_errors(self, errors: list[str], message: str) -> None:
        """The services' errors (``keys.A.q2: ...``) under the fields they name."""
        missing: dict[str | None, list[str]] = {}
        for error in errors or [message]:
            path, sep, text = error.partition(": ")
            if not sep:
                self.add_error(None, error)
                continue
            parts = [p for p in re.sub(r"\[\d+\]", "", path).split(".") if p]
            head = parts[0] if parts else ""
            if head == "keys":
                version = parts[1] if len(parts) > 1 else None
                field = key_field(version) if version and key_field(version) in self.fields else (
                    self.key_names[0] if self.key_names else None)
                gap = NO_KEY_FOR.match(text)
                if gap:
                    missing.setdefault(field or f"Version {version}: ", []).append(gap.group(1))
                    continue
                cell = cell_field(version, parts[2]) if version and len(parts) > 2 else None
                if cell in self.fields:
                    self.add_error(cell, text)
                    continue
                where = f"{parts[2]}: " if len(parts) > 2 else ""
                self.add_error(field, where + text if field else f"Version {version}: {where}{text}")
            elif head in ("name", "template", "wrong", "blank", "multiple", "evaluation", "answer_key_csv",
                          "points", "accepted", "dropped"):
                rest = ".".join(parts[1:])
                self.add_error(head, f"{rest}: {text}" if rest else text[:1].upper() + text[1:])
            elif head == "version":
                self.add_error("evaluation_version", text)
            elif head == "name" or (head == "" and not self.is_bound):
                continue
            else:
                self.add_error(None, error)
        for field, questions in missing.items():
            prefix = field if field not in self.fields else ""
            self.add_error(field if field in self.fields else None,
                           f"{prefix}no key for {question_ranges(questions, self.questions)}: a question in the exam needs a key on every "
                           "version (or an accepted answer, or to be dropped)")

    def check_rules(self) -> None:
        """When the form itself has errors, the services still check the keys
        and rules, so that every problem is shown at once."""
        if "template" in self.errors or self.cleaned_data.get("evaluation") is not None:
            return
        from .services import ExamError, read_exam_json

        data = self.cleaned_data
        try:
            body = self.exam_json_of({**data, "name": data.get("name") or "-"})
            read_exam_json(body)
        except ExamError as exc:
            self.add_service_errors([e for e in exc.errors if not e.startswith("name:")], exc.message)
        except KeyError:
            pass


class RosterForm(forms.Form):
    """A roster file: student number, name, optional group."""

    file = forms.FileField(label="Roster CSV",
                           help_text="Columns student number, name and an optional group; a header row is optional.")
    replace = forms.BooleanField(label="Replace the roster (otherwise students are added or updated)",
                                 required=False)

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > ROSTER_MAX_BYTES:
            raise forms.ValidationError("The file is over 10 MB; split the roster.")
        return upload
