"""The text inside the QR code printed on every page.

Format (version 1): ``OMR1;t=<template>;p=<page>[;n=<pages>][;e=<exam>][;s=<student>]``.
Values are percent-encoded (``urllib.parse.quote``), so ``;`` and ``=`` inside an
exam or student id are safe. Anything else is a foreign code and is reported,
never guessed at; so is a value holding a control character (``PayloadInvalid``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from .text import first_control

PREFIX = "OMR1"


class PayloadError(ValueError):
    """A QR code that is not one of ours, or is damaged."""


class PayloadInvalid(PayloadError):
    """One of our codes, read whole, with a control character in the template
    name, exam or student id. ``payload``: the rest of the code, the bad exam
    or student id left empty (None when the template name is the bad one)."""

    def __init__(self, message: str, payload: QrPayload | None = None):
        super().__init__(message)
        self.payload = payload


_VALUE_NAMES = {"t": "template name", "e": "exam id", "s": "student id"}
_FIELDS = {"e": "exam", "s": "student"}


@dataclass(frozen=True)
class QrPayload:
    template: str
    page: int = 1
    pages: int = 1
    exam: str = ""
    student: str = ""

    def encode(self) -> str:
        parts = [PREFIX, f"t={quote(self.template, safe='')}", f"p={self.page}"]
        if self.pages != 1:
            parts.append(f"n={self.pages}")
        if self.exam:
            parts.append(f"e={quote(self.exam, safe='')}")
        if self.student:
            parts.append(f"s={quote(self.student, safe='')}")
        return ";".join(parts)

    def to_dict(self) -> dict:
        return {"template": self.template, "page": self.page, "pages": self.pages,
                "exam": self.exam, "student": self.student}


def decode_payload(text: str) -> QrPayload:
    """Parse a QR code's text; raises ``PayloadError`` naming what is wrong."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    parts = text.split(";")
    if parts[0] != PREFIX:
        raise PayloadError(f"foreign QR code (not an answer-sheet code): {shown!r}")
    values: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key in values or key not in {"t", "p", "n", "e", "s"}:
            raise PayloadError(f"damaged answer-sheet QR code: {shown!r}")
        values[key] = unquote(value)
    try:
        page = int(values.get("p", "1"))
        pages = int(values.get("n", "1"))
    except ValueError:
        raise PayloadError(f"damaged answer-sheet QR code (page is not a number): {shown!r}") from None
    if "t" not in values or not values["t"] or not 1 <= page <= pages:
        raise PayloadError(f"damaged answer-sheet QR code: {shown!r}")
    payload = QrPayload(values["t"], page, pages, values.get("e", ""), values.get("s", ""))
    bad = [(key, first_control(values[key])) for key in _VALUE_NAMES if first_control(values.get(key, ""))]
    if bad:
        key, found = bad[0]
        message = f"answer-sheet QR code whose {_VALUE_NAMES[key]} holds a control character ({found}): {shown!r}"
        if key == "t":
            raise PayloadInvalid(message)
        cleaned = replace(payload, **{_FIELDS[k]: "" for k, _ in bad})
        raise PayloadInvalid(message + "; it is left out", cleaned)
    return payload
