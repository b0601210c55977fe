"""Exams: who may see them, creating and changing them from the API's JSON,
and importing an OMRChecker ``evaluation.json`` as an exam's key and rules.

Views parse the request and call these; these check the rules and raise
``ExamError`` with an HTTP status, a plain message and every problem by its
JSON path (``keys.E: unknown version 'E' ...``).

A change of key, rules, name or template is logged (``ExamChange``: who,
when, the exam before and after) and every sheet of the exam is scored again
in the same transaction, with the exam row locked, so the answer to the
request already carries the new scores.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from .. import sheet_templates
from ..scoring.evaluation import import_evaluation
from ..scoring.rules import RULE_FIELDS, ExamRules, ExamRulesError, parse_exam_rules
from ..scoring.scoring import ScoringTables, compile_rules
from .models import Exam, ExamChange
from .templates import ExamTemplate, exam_template

logger = logging.getLogger(__name__)

NAME_MAX = 200


class ExamError(Exception):
    """A request about an exam that cannot be done: ``status`` (400, 404, 409),
    ``message`` in plain words and ``errors``, each problem by its path."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors or [])


# ---------------------------------------------------------------- access


def exams_for(user):
    """The exams ``user`` may see: their own; every exam for superusers (as batches)."""
    if user.is_superuser:
        return Exam.objects.all()
    return Exam.objects.filter(owner=user)


def get_exam_or_404(user, exam_id) -> Exam:
    """One exam of ``user`` or 404 (another user's exam is not found either)."""
    try:
        return exams_for(user).get(pk=int(exam_id))
    except (Exam.DoesNotExist, ValueError, TypeError):
        raise Http404("no such exam") from None


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class CompiledExam:
    """An exam's template shape, rules and scoring tables, built from its row."""

    template: ExamTemplate
    rules: ExamRules
    tables: ScoringTables


def compiled(exam: Exam) -> CompiledExam:
    """The exam's rules checked against its template and compiled (cached by
    template and rules: a correction pays for neither)."""
    return _compiled(exam.template, orjson.dumps(exam.rules, option=orjson.OPT_SORT_KEYS).decode(),
                     _template_version(exam.template))


def _template_version(name: str):
    # A stored template's rows change when staff edit it: part of the cache key.
    if name in sheet_templates.builtin_names():
        return None
    from ..models import SheetTemplate

    return SheetTemplate.objects.filter(name=name).values_list("updated_at", flat=True).first()


@lru_cache(maxsize=64)
def _compiled(template_name: str, rules_json: str, _version) -> CompiledExam:
    template = exam_template(template_name)
    rules = parse_exam_rules(orjson.loads(rules_json), questions=template.questions, versions=template.versions)
    return CompiledExam(template, rules, compile_rules(rules))


def _template(name: Any) -> ExamTemplate:
    if not isinstance(name, str) or not name.strip():
        raise ExamError(400, "template: required, the name of a sheet template", ["template: is required"])
    name = name.strip()
    try:
        return exam_template(name)
    except FileNotFoundError:
        known = ", ".join(sheet_templates.names())
        raise ExamError(400, f"unknown template {name[:64]!r}; choose one of {known}",
                        [f"template: unknown template {name[:64]!r}"]) from None
    except ValueError as exc:
        raise ExamError(400, f"template {name!r} cannot be used: {exc}", [f"template: {exc}"]) from None


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExamError(400, "name: required, the exam's name", ["name: is required"])
    if len(value.strip()) > NAME_MAX:
        raise ExamError(400, f"name: at most {NAME_MAX} characters", [f"name: longer than {NAME_MAX} characters"])
    return value.strip()


def _refused(exc: ExamRulesError) -> ExamError:
    return ExamError(400, "; ".join(exc.errors), exc.errors)


@dataclass(frozen=True)
class ExamFields:
    """An exam's JSON, checked: name, template and rules (and the import's notes)."""

    name: str
    template: ExamTemplate
    rules: ExamRules
    notes: tuple[str, ...] = ()


def read_exam_json(data: Any) -> ExamFields:
    """Check an exam's JSON: ``name``, ``template`` and the rules (fields of
    ``batches.scoring.rules``), or ``evaluation`` (an OMRChecker
    evaluation.json, with ``answer_key_csv`` the text of its CSV key and
    ``version`` the version it keys) instead of the rules. Raises ``ExamError``
    400 naming every problem."""
    if not isinstance(data, dict):
        raise ExamError(400, "the body must be a JSON object", ["must be a JSON object"])
    name = _name(data.get("name"))
    template = _template(data.get("template"))
    if data.get("evaluation") is not None:
        given = [f for f in RULE_FIELDS if data.get(f) not in (None, {}, [])]
        if given:
            raise ExamError(400, f"send either evaluation or the rules, not both ({', '.join(given)} given)",
                            [f"{f}: not with evaluation" for f in given])
        imported = evaluation_rules(template, data["evaluation"], answer_key_csv=data.get("answer_key_csv"),
                                    version=data.get("version"))
        return ExamFields(name, template, imported.rules, imported.notes)
    try:
        rules = parse_exam_rules(data, questions=template.questions, versions=template.versions)
    except ExamRulesError as exc:
        raise _refused(exc) from None
    return ExamFields(name, template, rules)


def evaluation_rules(template: ExamTemplate, evaluation: Any, *, answer_key_csv: Any = None, version: Any = None):
    """An OMRChecker ``evaluation.json`` (parsed) read as rules for ``template``:
    an ``ImportedEvaluation`` (rules and notes). ``answer_key_csv``: the text of
    the CSV its ``answer_key_csv_path`` names, sent beside it."""
    if version is not None and not isinstance(version, str):
        raise ExamError(400, "version: must be text such as \"A\"", ["version: must be text"])

    def read_answer_key(path: str) -> str:
        if not isinstance(answer_key_csv, str):
            raise ExamRulesError([f"options.answer_key_csv_path: send the text of {path!r} as answer_key_csv"])
        return answer_key_csv

    try:
        return import_evaluation(evaluation, questions=template.questions, versions=template.versions,
                                 version=version, read_answer_key=read_answer_key)
    except ExamRulesError as exc:
        errors = [f"evaluation.{e}" for e in exc.errors]
        raise ExamError(400, "; ".join(errors), errors) from None


# ---------------------------------------------------------------- create, change


def create_exam(owner, data: Any) -> Exam:
    """A new exam of ``owner`` from the API's JSON (see ``read_exam_json``)."""
    fields = read_exam_json(data)
    exam = Exam.objects.create(owner=owner, name=fields.name, template=fields.template.name,
                               rules=fields.rules.to_json(), notes=list(fields.notes))
    logger.info("Exam %s created by %s: %s on %s", exam.pk, owner, exam.name, exam.template)
    return exam


@dataclass(frozen=True)
class ExamUpdate:
    exam: Exam
    change: ExamChange | None  # None when nothing changed
    rescored: int


def snapshot(exam: Exam) -> dict[str, Any]:
    """What the change log keeps of an exam."""
    return {"name": exam.name, "template": exam.template, "rules": exam.rules}


def update_exam(exam: Exam, user, data: Any) -> ExamUpdate:
    """Replace an exam's name, template, key and rules with the API's JSON
    (``PUT``: the whole exam), log the change and score every sheet again, in
    one transaction with the exam row locked. An exam with sheets keeps its
    template (409): its sheets were read with it."""
    from . import scores

    fields = read_exam_json(data)
    with transaction.atomic():
        locked = Exam.objects.select_for_update().get(pk=exam.pk)
        if fields.template.name != locked.template and locked.scores.exists():
            raise ExamError(409, f"the exam has sheets read with template {locked.template}; its template cannot "
                                 f"change (create a new exam for {fields.template.name})",
                            [f"template: the exam's sheets are {locked.template} sheets"])
        before = snapshot(locked)
        locked.name, locked.template = fields.name, fields.template.name
        locked.rules = fields.rules.to_json()
        locked.notes = list(fields.notes)
        after = snapshot(locked)
        if before == after:
            return ExamUpdate(locked, None, 0)
        locked.updated_at = timezone.now()
        locked.save()
        rescored = scores.rescore_exam(locked) if before["rules"] != after["rules"] else 0
        change = ExamChange.objects.create(exam=locked, user=user, created_at=locked.updated_at, old=before,
                                           new=after, rescored=rescored)
    logger.info("Exam %s changed by %s: %d sheets scored again", exam.pk, user, rescored)
    return ExamUpdate(locked, change, rescored)


def import_evaluation_file(exam: Exam, user, evaluation: Any, *, answer_key_csv: Any = None,
                           version: Any = None) -> ExamUpdate:
    """An OMRChecker ``evaluation.json`` as the key and rules of an existing
    exam: the same as ``update_exam`` with the exam's name and template."""
    return update_exam(exam, user, {"name": exam.name, "template": exam.template, "evaluation": evaluation,
                                    "answer_key_csv": answer_key_csv, "version": version})


# ---------------------------------------------------------------- JSON


def exam_json(exam: Exam, urls: dict[str, str] | None = None) -> dict[str, Any]:
    """An exam as the API gives it: the fields ``POST /api/exams`` takes (so
    it can be sent back with ``PUT``), then what the server adds."""
    from . import scores

    def iso(value):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    body: dict[str, Any] = {"exam_id": exam.pk, "name": exam.name, "template": exam.template, **exam.rules}
    try:
        shape = compiled(exam)
        body["questions"] = list(shape.rules.questions)
        body["versions"] = list(shape.template.versions) if shape.template.versions is not None else None
        body["max_score"] = shape.rules.max_score
    except (FileNotFoundError, ValueError) as exc:
        body["error"] = f"the exam's template or rules no longer check: {exc}"
    body.update({
        "notes": exam.notes,
        "roster": exam.roster.count(),
        "batches": [str(pk) for pk in exam.batches.order_by("created_at").values_list("pk", flat=True)],
        "sheets_scored": scores.counted_sheets(exam),
        "created_at": iso(exam.created_at),
        "updated_at": iso(exam.updated_at),
        **(urls or {}),
    })
    return body


# ---------------------------------------------------------------- uploads


def upload_exam(user, exam_id: Any, template: str = "") -> tuple[Exam | None, str]:
    """The exam a new batch is uploaded for (``exam=`` of ``POST
    /api/batches/upload`` and of the tus metadata) and the batch's template:
    the exam's when none is given. Raises ``accept.ServiceError`` 400 for an
    exam that is not the user's (as if it did not exist) or a template that
    is not the exam's."""
    from ..uploads.accept import ServiceError

    text = str(exam_id).strip() if exam_id is not None else ""
    if not text:
        return None, template
    try:
        exam = exams_for(user).get(pk=int(text))
    except (Exam.DoesNotExist, ValueError):
        raise ServiceError(400, f"exam: no exam {text[:20]!r}") from None
    template = (template or "").strip()
    if template and template != exam.template:
        raise ServiceError(400, f"template: the exam {exam.name!r} is on template {exam.template}, not {template}")
    return exam, exam.template
