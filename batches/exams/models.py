"""The exams' rows: an exam (its key and rules as ``ExamRules.to_json()``, and
its saved statistics), its roster, one score row per sheet scored, and the log
of changes to its key and rules.

A *sheet* here is one student's answer sheet: one page, or every page of a
multi-page template (the pages a batch holds of one student). Its score row
points at its first page and lists every page (``pages``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Exam(models.Model):
    """An exam: a name, a sheet template, and its keys and scoring rules."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exams")
    name = models.CharField(max_length=200)
    template = models.CharField(max_length=64, help_text="Sheet template name (a built-in or uploaded one).")
    rules = models.JSONField(default=dict, help_text="Keys and scoring rules, as ExamRules.to_json() gives them.")
    notes = models.JSONField(default=list, blank=True, help_text="What an evaluation.json import left out.")
    statistics = models.JSONField(null=True, blank=True, editable=False,
                                  help_text="Item-analysis sums (ItemStatistics.to_dict()) over the sheets scored.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("batches:api-exam", args=[self.pk])


class RosterEntry(models.Model):
    """A student expected to sit the exam."""

    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="roster")
    student_number = models.CharField(max_length=64, help_text="As on the QR code and the student-number grid.")
    name = models.CharField(max_length=200)
    group = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["exam", "student_number"]
        verbose_name_plural = "roster entries"
        constraints = [models.UniqueConstraint(fields=["exam", "student_number"], name="roster_unique_student")]

    def __str__(self) -> str:
        return f"{self.student_number} {self.name}"


class ScoreProblem(models.TextChoices):
    """Why a sheet has no score."""

    NONE = "", "Scored"
    OTHER_EXAM = "other_exam", "Sheet of another exam"
    NO_KEY = "no_key", "Version without a key"
    BAD_ANSWER = "bad_answer", "An answer that is not one of the options"


class SheetScore(models.Model):
    """One sheet scored for an exam: its student, version, score and what each
    question earned. ``answers`` holds the answer to every question of the
    template as read or corrected (so a new key re-scores without reading the
    answer rows again); ``earned`` and ``right`` follow the exam's questions in
    order. ``counted``: the sheet is in the exam's statistics."""

    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="scores")
    batch = models.ForeignKey("batches.Batch", on_delete=models.CASCADE, related_name="scores")
    sheet = models.OneToOneField("batches.Sheet", on_delete=models.CASCADE, related_name="exam_score",
                                 help_text="The sheet's first page.")
    pages = models.JSONField(default=list, help_text="Ids of the sheet's pages, in page order.")
    student = models.CharField(max_length=64, blank=True, help_text="From the QR code, else the number grid.")
    roster_entry = models.ForeignKey(RosterEntry, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="scores")
    version = models.CharField(max_length=64, blank=True)
    problem = models.CharField(max_length=16, choices=ScoreProblem.choices, blank=True, default="")
    counted = models.BooleanField(default=True)
    score = models.FloatField(null=True, blank=True)
    max_score = models.FloatField(default=0.0)
    answers = models.JSONField(default=dict)
    earned = models.JSONField(default=list)
    right = models.JSONField(default=list)
    scored_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["batch", "sheet"]
        indexes = [models.Index(fields=["exam", "batch"]), models.Index(fields=["exam", "student"])]

    def __str__(self) -> str:
        return f"{self.student or 'unknown'}: {self.score}/{self.max_score}"


class ExamChange(models.Model):
    """A change of an exam's key or rules (or name or template): who, when,
    the exam before and after, and how many sheets were scored again."""

    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="changes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    old = models.JSONField(help_text='{"name", "template", "rules"} before.')
    new = models.JSONField(help_text='{"name", "template", "rules"} after.')
    rescored = models.IntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.exam} changed {self.created_at:%Y-%m-%d %H:%M}"
