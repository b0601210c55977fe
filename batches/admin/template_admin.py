"""Sheet templates in the admin site: staff upload an OMRChecker
``template.json`` (with its marker or reference image and ``config.json``) or a
template in this project's format, and batches can then use it like a
built-in one. The upload is parsed on save; every problem is shown by name and
nothing is stored until the template parses."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join

from .. import sheet_templates
from ..models import SheetTemplate
from ..omr import text

MAX_FILE_BYTES = 20 * 1024 * 1024


def _read(upload, what: str) -> bytes:
    if upload.size > MAX_FILE_BYTES:
        raise forms.ValidationError(f"{what} is {upload.size / 1e6:.1f} MB; the limit is "
                                    f"{MAX_FILE_BYTES / 1e6:.0f} MB")
    return upload.read()


def _json(upload, what: str) -> dict:
    try:
        data = json.loads(_read(upload, what).decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise forms.ValidationError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise forms.ValidationError(f"{what} must hold a JSON object")
    try:
        # Labels and names reach the pages, the CSV header and the database.
        text.check_json(data, what)
    except text.TextError as exc:
        raise forms.ValidationError(str(exc)) from None
    return data


def import_template(name: str, kind: str, template: dict, *, marker: bytes | None = None,
                    reference: bytes | None = None, config: dict | None = None):
    """Parse an uploaded template; returns ``(definition, resolved)`` or raises
    ``ValueError`` naming each problem. Images are handed over as bytes and
    the JSON as a dict, so nothing in an upload can name a file to read."""
    if kind == sheet_templates.OMRCHECKER:
        from ..omr.omrchecker import load_omrchecker_template

        images = {}
        for step in template.get("preProcessors") or []:
            if isinstance(step, dict) and step.get("name") == "FeatureBasedAlignment" and reference is not None:
                ref = (step.get("options") or {}).get("reference")
                if isinstance(ref, str):
                    images[ref] = reference
        parsed = load_omrchecker_template(template, marker_image_bytes=marker, config=config, images=images,
                                          name=name)
        definition = parsed.to_dict()
    else:
        definition = {**template, "name": name}
    resolved = sheet_templates.parse_definition(name, kind, definition)
    return definition, resolved


def _other_kind(kind: str, template) -> tuple[str, str] | None:
    """(the other kind's label, what the file is) when an uploaded template
    is plainly of the other kind than the one chosen: an OMRChecker
    template.json (``fieldBlocks``, no ``format``) as this project's, or
    this project's (``format``) as OMRChecker's. Its own parser would only
    list what the file lacks."""
    if not isinstance(template, dict):
        return None
    labels = dict(SheetTemplate.KIND_CHOICES)
    if kind == sheet_templates.NATIVE and "fieldBlocks" in template and "format" not in template:
        return labels[sheet_templates.OMRCHECKER], "an OMRChecker template.json (it has fieldBlocks)"
    if kind == sheet_templates.OMRCHECKER and template.get("format") == sheet_templates.NATIVE:
        return labels[sheet_templates.NATIVE], f"in this project's format ({sheet_templates.NATIVE})"
    return None


class SheetTemplateForm(forms.ModelForm):
    template_file = forms.FileField(
        label="Template file", required=False,
        help_text="OMRChecker: its template.json. This project's format: the template JSON. "
                  "Leave empty to keep the current one.")
    marker_image = forms.FileField(label="Marker image", required=False,
                                   help_text="OMRChecker CropOnMarkers: the marker image (e.g. omr_marker.jpg).")
    reference_image = forms.FileField(label="Reference image", required=False,
                                      help_text="OMRChecker FeatureBasedAlignment: the blank reference sheet.")
    config_file = forms.FileField(label="config.json", required=False,
                                  help_text="OMRChecker: its config.json, where the template needs it.")

    class Meta:
        model = SheetTemplate
        fields = ["name", "kind", "description"]

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not sheet_templates.NAME_RE.match(name):
            raise forms.ValidationError("use lower-case letters, digits, - and _ (at most 64, starting with a "
                                        "letter or digit)")
        if name in sheet_templates.builtin_names():
            raise forms.ValidationError(f"{name!r} is a built-in template; choose another name")
        return name

    def clean(self):
        data = super().clean()
        name, kind = data.get("name"), data.get("kind")
        if not name or not kind:
            return data
        upload = data.get("template_file")
        if upload is None and self.instance.pk is None:
            self.add_error("template_file", "upload the template file")
            return data
        try:
            if upload is not None:
                template = _json(upload, "the template file")
            elif kind == self.instance.kind and kind == sheet_templates.NATIVE:
                template = self.instance.definition
            elif kind == self.instance.kind:
                # An OMRChecker template kept as it is: parse what is stored under the new name.
                self._definition = {**self.instance.definition, "name": name}
                self._resolved = sheet_templates.parse_definition(name, kind, self._definition)
                return data
            else:
                self.add_error("template_file", "upload the template file for the new kind")
                return data
            other = _other_kind(kind, template)
            if other is not None:
                self.add_error("kind", f"the template file is {other[1]}: choose the kind “{other[0]}”")
                return data
            marker = _read(data["marker_image"], "the marker image") if data.get("marker_image") else None
            reference = (_read(data["reference_image"], "the reference image")
                         if data.get("reference_image") else None)
            config = _json(data["config_file"], "config.json") if data.get("config_file") else None
            self._definition, self._resolved = import_template(name, kind, template, marker=marker,
                                                               reference=reference, config=config)
        except ValueError as exc:
            problems = getattr(exc, "errors", None) or getattr(exc, "problems", None) or [str(exc)]
            if isinstance(problems, str):
                problems = [problems]
            raise forms.ValidationError([forms.ValidationError(str(p)) for p in problems]) from None
        return data

    def save(self, commit=True):
        obj = super().save(commit=False)
        obj.definition = self._definition
        obj.fields_count = len(self._resolved.field_names())
        obj.notes = list(getattr(self._resolved.template, "notes", []) or [])
        if commit:
            obj.save()
        return obj


@admin.register(SheetTemplate)
class SheetTemplateAdmin(admin.ModelAdmin):
    form = SheetTemplateForm
    list_display = ["name", "kind", "description", "fields_count", "uploaded_by", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "description"]
    readonly_fields = ["fields_count", "import_notes", "answer_columns", "uploaded_by", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "description"]}),
        ("Files", {"fields": ["template_file", "marker_image", "reference_image", "config_file"]}),
        ("What was read", {"fields": ["fields_count", "answer_columns", "import_notes", "uploaded_by",
                                      "created_at", "updated_at"]}),
    ]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.uploaded_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="Notes from the import")
    def import_notes(self, obj):
        if not obj.notes:
            return "none"
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((n,) for n in obj.notes)))

    @admin.display(description="Answer columns (CSV)")
    def answer_columns(self, obj):
        if not obj.pk:
            return "-"
        try:
            columns = sheet_templates.parse_definition(obj.name, obj.kind, obj.definition).field_names()
        except ValueError as exc:
            return f"does not parse: {exc}"
        return ", ".join(columns)
