"""Forms of the browser pages. Checks that need the file's content (archive
entries, page counts, image sizes) happen in the services and the pipeline;
these only check what a person typed or picked."""

from __future__ import annotations

import re
from pathlib import PurePath

from django import forms
from django.conf import settings

from ..display import size_text
from ..omr import builtin_names
from ..pipeline.extract import UPLOAD_EXTENSIONS
from ..uploads.accept import upload_limit_text

ACCEPT = ",".join(sorted(UPLOAD_EXTENSIONS))


def template_choices() -> list[tuple[str, str]]:
    """Sheet templates as (name, label): the built-ins, e.g. ``a4-100q-5`` ->
    "A4, 100 questions, 5 options (a4-100q-5)", then the ones uploaded in the admin."""
    choices = []
    # Natural order (20 before 100), so the list reads like a catalogue.
    for name in sorted(builtin_names(), key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]):
        label = name
        parts = name.split("-")
        if len(parts) == 3 and parts[1].endswith("q") and parts[1][:-1].isdigit() and parts[2].isdigit():
            paper = parts[0].upper() if parts[0].startswith("a") else parts[0].capitalize()
            label = f"{paper}, {parts[1][:-1]} questions, {parts[2]} options ({name})"
        choices.append((name, label))
    from ..models import SheetTemplate

    for name, kind, description in SheetTemplate.objects.order_by("name").values_list("name", "kind", "description"):
        what = "OMRChecker template" if kind == "omrchecker" else "uploaded template"
        choices.append((name, f"{description or name} ({what}: {name})"))
    return choices


class UploadForm(forms.Form):
    """The upload page: a scanned file, how its pages are identified, the template."""

    file = forms.FileField(
        label="Scanned sheets",
        help_text="A ZIP of scans, a PDF, a TIFF or one image.",
        widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}),
    )
    has_qr = forms.TypedChoiceField(
        label="Pages carry a QR code",
        choices=[("true", "Yes: sort pages by their QR code"), ("false", "No: take pages in file order")],
        coerce=lambda value: value == "true",
        initial="true",
        widget=forms.RadioSelect,
    )
    template = forms.ChoiceField(
        label="Sheet template",
        help_text="Used for pages without a readable QR code.",
        choices=template_choices,
    )

    exam = forms.TypedChoiceField(
        label="Exam",
        help_text="The sheets are matched to its roster and scored with its key; its template is used.",
        required=False,
        coerce=int,
        empty_value=None,
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        default = settings.OMR_DEFAULT_TEMPLATE
        if default in dict(template_choices()):
            self.fields["template"].initial = default
        from ..exams.services import exams_for

        self.exams = list(exams_for(user).order_by("-created_at").values_list("pk", "name", "template")) if user else []
        self.fields["exam"].choices = [("", "None: only read the sheets")] + [
            (pk, f"{name} ({template})") for pk, name, template in self.exams]

    def clean_file(self):
        upload = self.cleaned_data["file"]
        suffix = PurePath(upload.name or "").suffix.lower()
        if suffix not in UPLOAD_EXTENSIONS:
            kinds = ", ".join(sorted(e.lstrip(".") for e in UPLOAD_EXTENSIONS))
            raise forms.ValidationError(
                f"“{upload.name}” is not a file this server reads (.{suffix.lstrip('.') or '?'}). "
                f"Upload one of: {kinds}."
            )
        if upload.size == 0:
            raise forms.ValidationError(f"“{upload.name}” is empty.")
        if upload.size > settings.OMR_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"“{upload.name}” is {size_text(upload.size)}; the limit is {upload_limit_text()}. "
                "Split the scans into several uploads."
            )
        return upload
