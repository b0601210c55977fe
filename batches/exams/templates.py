"""What an exam needs to know of its sheet template: the questions (name ->
option labels, in template order), the version field and its values, the
student-number field, the number of pages, and the empty value a question
reads as when it is left blank (OMRChecker's ``emptyValue``).

- This project's templates (built-in or uploaded): every field of a
  ``questions`` block is a question; the version field is the ``choice``
  field named ``exam_version`` (or the only ``choice`` field); the student
  number is the ``digits`` field named ``student_number`` (or the only one).
- OMRChecker templates: a question is a field of its own (not joined into a
  custom label) whose values are not digits (``QTYPE_MCQ4``, ``QTYPE_MCQ5``,
  letters of its own); they carry no version field (one key scores every
  sheet) and no QR code; the student number is a field or custom label named
  ``student_number``, ``roll`` or ``Roll`` when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import sheet_templates

VERSION_FIELD = "exam_version"
STUDENT_FIELD = "student_number"
OMRCHECKER_STUDENT_FIELDS = ("student_number", "roll", "Roll", "roll_number", "Roll_no")


@dataclass(frozen=True)
class ExamTemplate:
    name: str
    pages: int
    questions: dict[str, tuple[str, ...]]
    version_field: str | None
    versions: tuple[str, ...] | None
    student_field: str | None
    empty_values: dict[str, str] = field(default_factory=dict)

    def answer(self, question: str, value: str | None) -> str:
        """A stored answer as the scoring reads it: the template's own empty value is blank."""
        if value is None:
            return ""
        return "" if value == self.empty_values.get(question, "") else value


def exam_template(name: str) -> ExamTemplate:
    """The shape of template ``name``; raises ``FileNotFoundError`` (unknown)
    or ``ValueError`` (a stored template that no longer parses)."""
    resolved = sheet_templates.resolve(name)
    if resolved.is_omrchecker:
        return _omrchecker(name, resolved.template)
    return _native(name, resolved.template)


def _native(name: str, template) -> ExamTemplate:
    questions: dict[str, tuple[str, ...]] = {}
    for block in sorted(template.questions, key=lambda b: b.first):
        for i in range(block.count):
            questions.setdefault(block.field_name(block.first + i), tuple(block.options))
    choices = {c.name: tuple(c.options) for c in template.choices}
    version_field = VERSION_FIELD if VERSION_FIELD in choices else (next(iter(choices)) if len(choices) == 1 else None)
    grids = list(dict.fromkeys(g.name for g in template.digit_grids))
    student_field = STUDENT_FIELD if STUDENT_FIELD in grids else (grids[0] if len(grids) == 1 else None)
    return ExamTemplate(name, template.pages, questions, version_field,
                        choices[version_field] if version_field else None, student_field)


def _omrchecker(name: str, template) -> ExamTemplate:
    joined = {label for labels in template.custom_labels.values() for label in labels}
    questions: dict[str, tuple[str, ...]] = {}
    empty: dict[str, str] = {}
    columns = set(template.output_columns)
    for f in template.fields:
        if f.label in joined or f.label not in columns or all(v.isdigit() for v in f.values):
            continue
        questions[f.label] = tuple(f.values)
        if f.empty_value:
            empty[f.label] = f.empty_value
    ordered = {q: questions[q] for q in template.output_columns if q in questions}
    student = next((s for s in OMRCHECKER_STUDENT_FIELDS if s in columns), None)
    return ExamTemplate(name, 1, ordered, None, None, student, empty)
