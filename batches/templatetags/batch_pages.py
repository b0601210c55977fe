"""Template filters for the batch pages."""

from __future__ import annotations

from django import template
from django.template.defaultfilters import filesizeformat

from .. import sheet_templates
from ..web.timeline import format_duration

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """Seconds as people read them: ``0.4 s``, ``12 s``, ``3 min 05 s``."""
    try:
        if seconds is None or seconds == "":
            return ""
        return format_duration(seconds if isinstance(seconds, int) else float(seconds))
    except (TypeError, ValueError):
        return ""


@register.filter
def percent_width(value) -> str:
    """A percentage clamped to 0-100 for a CSS width (always a dot decimal)."""
    try:
        number = max(0.0, min(100.0, float(value)))
    except (TypeError, ValueError):
        number = 0.0
    return f"{number:.1f}"


@register.filter
def bytes_size(value) -> str:
    """File size in people's units (``12.4 MB``)."""
    return filesizeformat(value or 0)


@register.filter
def points(value) -> str:
    """A score as people write it: ``27``, ``27.25``, ``34.5`` (never ``34.50``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return f"{number:.2f}".rstrip("0").rstrip(".")


@register.filter
def pages_by_qr(batch) -> bool:
    """Whether ``batch`` identifies its pages by their QR codes (then its own
    template is only for pages without one)."""
    return sheet_templates.reads_qr(batch.template, batch.has_qr)
