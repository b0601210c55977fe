"""Exams in the admin: staff create and edit their exams (name, template, key
and rules as JSON, or an OMRChecker evaluation.json) and the roster (inline,
or a CSV file imported all or nothing). Saving goes through the services, so
a change of key is checked, logged and re-scores the sheets as through the
API. Staff see their own exams (superusers all), as batches."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages

from .. import sheet_templates
from . import roster, services
from .models import Exam, ExamChange, RosterEntry, SheetScore


class ExamForm(forms.ModelForm):
    rules = forms.JSONField(required=False, help_text='{"keys": {"A": {"q1": "B"}}, "points": {"q1": 2}, '
                                                      '"wrong": -0.25, "blank": 0, "multiple": 0, '
                                                      '"accepted": {}, "dropped": []}')
    evaluation = forms.FileField(required=False, help_text="Or an OMRChecker evaluation.json, as key and rules.")
    answer_key = forms.FileField(required=False, help_text="The answer key CSV its answer_key_csv_path names.")
    roster_csv = forms.FileField(required=False, label="Roster CSV",
                                 help_text="Student number, name, optional group; a header row is optional.")
    replace_roster = forms.BooleanField(required=False, help_text="Empty the roster before importing.")

    class Meta:
        model = Exam
        fields = ["name", "template", "rules"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = sheet_templates.names()
        self.fields["template"] = forms.ChoiceField(choices=[(n, n) for n in names], initial=names[0] if names else None)

    def clean(self):
        data = super().clean()
        body = {"name": data.get("name"), "template": data.get("template")}
        upload = data.get("evaluation")
        if upload:
            try:
                body["evaluation"] = json.loads(upload.read().decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise forms.ValidationError({"evaluation": f"not a JSON file ({exc})"}) from None
            if data.get("answer_key"):
                body["answer_key_csv"] = data["answer_key"].read().decode("utf-8-sig", errors="replace")
        else:
            body.update(data.get("rules") or {})
        try:
            self.checked = services.read_exam_json(body)
        except services.ExamError as exc:
            raise forms.ValidationError(exc.errors or [exc.message]) from None
        self.body = body
        if data.get("roster_csv"):
            try:
                self.roster_rows = roster.parse_roster(data["roster_csv"].read())
            except roster.RosterError as exc:
                raise forms.ValidationError({"roster_csv": exc.errors}) from None
        return data


class RosterInline(admin.TabularInline):
    model = RosterEntry
    extra = 1
    fields = ["student_number", "name", "group"]


@admin.register(Exam)
class ExamAdmin(admin.ModelAdmin):
    form = ExamForm
    list_display = ["name", "template", "owner", "created_at", "updated_at"]
    search_fields = ["name", "template"]
    inlines = [RosterInline]
    readonly_fields = ["owner", "notes", "created_at", "updated_at"]

    def get_queryset(self, request):
        return services.exams_for(request.user)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.owner = request.user
            obj.rules = form.checked.rules.to_json()
            obj.notes = list(form.checked.notes)
            obj.save()
        else:
            try:
                services.update_exam(obj, request.user, form.body)
            except services.ExamError as exc:
                self.message_user(request, f"The exam was not changed: {exc.message}", messages.ERROR)
            obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        upload = form.cleaned_data.get("roster_csv")
        if upload:
            upload.seek(0)
            try:
                result = roster.import_roster_csv(form.instance, upload.read(),
                                                  replace=form.cleaned_data.get("replace_roster", False))
            except roster.RosterError as exc:
                self.message_user(request, "The roster was not imported: " + "; ".join(exc.errors), messages.ERROR)
                return
            self.message_user(request, f"Roster: {result.added} added, {result.updated} updated.", messages.SUCCESS)
        elif any(fs.has_changed() for fs in formsets):
            from . import scores

            scores.match_roster(form.instance)


@admin.register(SheetScore)
class SheetScoreAdmin(admin.ModelAdmin):
    list_display = ["exam", "student", "version", "score", "max_score", "problem", "batch"]
    list_filter = ["problem"]
    search_fields = ["student", "exam__name"]
    list_select_related = ["exam", "batch"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(exam__in=services.exams_for(request.user))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # scores follow the answers and the key


@admin.register(ExamChange)
class ExamChangeAdmin(admin.ModelAdmin):
    list_display = ["created_at", "exam", "user", "rescored"]
    list_select_related = ["exam", "user"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(exam__in=services.exams_for(request.user))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the log stays
