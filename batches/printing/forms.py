"""The print forms: an exam's roster and walk-in sheets, and blank sheets of a template."""

from __future__ import annotations

from django import forms

from .services import MAX_BLANKS, ORDER_GROUP, ORDERS


def printable_template_choices() -> list[tuple[str, str]]:
    """The upload page's templates less OMRChecker ones (printed from their own files)."""
    from ..models import SheetTemplate
    from ..web.forms import template_choices

    omrchecker = set(SheetTemplate.objects.filter(kind="omrchecker").values_list("name", flat=True))
    return [(name, label) for name, label in template_choices() if name not in omrchecker]


class ExamPrintForm(forms.Form):
    roster = forms.BooleanField(label="A sheet for every student on the roster", required=False, initial=True)
    order = forms.ChoiceField(label="Order", choices=list(ORDERS.items()), initial=ORDER_GROUP,
                              widget=forms.RadioSelect)
    blanks = forms.IntegerField(label="Blank sheets for walk-ins", min_value=0, max_value=MAX_BLANKS, initial=0,
                                help_text="They carry the exam in their QR code; students fill the "
                                          "student-number grid.")


class BlankPrintForm(forms.Form):
    template = forms.ChoiceField(label="Sheet template", choices=printable_template_choices)
    count = forms.IntegerField(label="Blank sheets", min_value=1, max_value=MAX_BLANKS, initial=30)
