"""The names of the flags a reading carries: one enumeration for the engine,
the server (its admin filters, its checks across pages) and the docs
(``docs/reader.md`` describes each; a test keeps them in step).

``Flag`` is a ``StrEnum``: a member equals its string, so readings stay plain
JSON and ``"blank" == Flag.BLANK``.
"""

from __future__ import annotations

from enum import StrEnum


class Flag(StrEnum):
    """Every flag, with the words a person reads it by (``label``)."""

    # Field flags: on one answer field.
    BLANK = "blank"
    MULTIPLE = "multiple"
    AMBIGUOUS = "ambiguous"
    FAINT = "faint"
    ERASURE = "erasure"
    CIRCLED = "circled"
    GAP = "gap"
    # Field and sheet flags.
    MISALIGNED = "misaligned"
    # Sheet flags: on the whole page.
    UNREADABLE = "unreadable"
    NOT_A_SHEET = "not_a_sheet"
    WRONG_TEMPLATE = "wrong_template"
    UNKNOWN_TEMPLATE = "unknown_template"
    QR_MISSING = "qr_missing"
    QR_FOREIGN = "qr_foreign"
    QR_DAMAGED = "qr_damaged"
    QR_INVALID = "qr_invalid"
    PAGE_UNKNOWN = "page_unknown"
    LOW_CONTRAST = "low_contrast"
    CUT_OFF = "cut_off"
    BLURRED = "blurred"
    # Sheet flags the server adds from what it sees across the pages of a batch.
    EXTRA_PAGES = "extra_pages"
    DUPLICATE_PAGE = "duplicate_page"
    MISSING_PAGE = "missing_page"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Flag.BLANK: "Blank",
    Flag.MULTIPLE: "Multiple marks",
    Flag.AMBIGUOUS: "Ambiguous mark",
    Flag.FAINT: "Faint mark",
    Flag.ERASURE: "Erasure",
    Flag.CIRCLED: "Circled bubble",
    Flag.GAP: "Gap in a number",
    Flag.MISALIGNED: "Misaligned",
    Flag.UNREADABLE: "Unreadable",
    Flag.NOT_A_SHEET: "Not a sheet",
    Flag.WRONG_TEMPLATE: "Wrong template",
    Flag.UNKNOWN_TEMPLATE: "Unknown template",
    Flag.QR_MISSING: "QR code missing",
    Flag.QR_FOREIGN: "Foreign QR code",
    Flag.QR_DAMAGED: "QR code damaged",
    Flag.QR_INVALID: "QR code with a control character",
    Flag.PAGE_UNKNOWN: "Page unknown",
    Flag.LOW_CONTRAST: "Low contrast",
    Flag.CUT_OFF: "Cut off",
    Flag.BLURRED: "Blurred",
    Flag.EXTRA_PAGES: "Extra pages",
    Flag.DUPLICATE_PAGE: "Duplicate page",
    Flag.MISSING_PAGE: "Missing page",
}

#: Field flags that do not by themselves call for review.
NOT_REVIEW = frozenset({Flag.BLANK})
#: Flags that come from comparing the sheets of a batch with each other: a
#: reading of one sheet never has them.
CROSS_SHEET = frozenset({Flag.DUPLICATE_PAGE, Flag.MISSING_PAGE})
