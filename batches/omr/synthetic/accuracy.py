"""Scoring readings against ground truth (the simulator's, or a hand-checked file).

A field is *right* when the value read equals the truth. A wrong field is
*flagged* when the reader raised a doubt about it (any field flag other than a
plain ``blank``, or a sheet-level flag, or no reading at all); otherwise it is a
*silent error*, the failure that must never happen. A flag on a right value is
*needless* unless the truth itself called for review (several marks, an erasure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

NOT_DOUBT = {"blank"}


@dataclass
class Score:
    """Counts over one or more sheets."""

    sheets: int = 0
    failed_sheets: int = 0
    fields: int = 0
    bubbles: int = 0
    right: int = 0
    wrong_flagged: int = 0
    silent_errors: int = 0
    flagged: int = 0
    needless_flags: int = 0
    sheets_needing_review: int = 0
    silent: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.right / self.fields if self.fields else 1.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.fields if self.fields else 0.0

    @property
    def needless_rate(self) -> float:
        return self.needless_flags / self.fields if self.fields else 0.0

    def add(self, other: Score) -> Score:
        for name in ("sheets", "failed_sheets", "fields", "bubbles", "right", "wrong_flagged", "silent_errors",
                     "flagged", "needless_flags", "sheets_needing_review"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.silent.extend(other.silent)
        return self


def field_doubted(reading: dict, name: str) -> bool:
    """True when the reading tells a reviewer to look at this field."""
    if reading.get("error") or reading.get("sheet_flags"):
        return True
    flags = set((reading.get("flags") or {}).get(name) or [])
    return bool(flags - NOT_DOUBT)


def score_sheet(reading: dict, truth: dict, bubbles: int = 0, digit_fields: Iterable[str] = ("student_number",)) -> Score:
    """Score one reading (``SheetReading.to_dict()``) against the truth dict.

    ``truth`` carries ``answers`` ({field: value}) and optionally ``erased``
    (fields with an erased earlier mark). ``bubbles`` is how many bubbles the
    page has, for the report; ``digit_fields`` are the fields whose values are
    several characters by nature (a value of two letters elsewhere is a
    multiple mark, which must be flagged).
    """
    s = Score(sheets=1, bubbles=bubbles)
    answers = reading.get("answers") or {}
    failed = bool(reading.get("error")) or not answers
    s.failed_sheets = int(failed)
    s.sheets_needing_review = int(bool(reading.get("needs_review")) or failed)
    erased = set(truth.get("erased") or [])
    digit_fields = set(digit_fields)
    for name, expected in truth["answers"].items():
        s.fields += 1
        got = answers.get(name)
        doubted = failed or field_doubted(reading, name)
        s.flagged += int(doubted)
        if got == expected and not failed:
            s.right += 1
            several_marks = len(expected) > 1 and name not in digit_fields
            review_called_for = several_marks or name in erased
            if doubted and not review_called_for:
                s.needless_flags += 1
        elif doubted:
            s.wrong_flagged += 1
        else:
            s.silent_errors += 1
            s.silent.append(f"{truth.get('source', reading.get('file', '?'))}: {name} read {got!r}, truth {expected!r}")
    return s


def score_all(pairs: Iterable[tuple[dict, dict, int]]) -> Score:
    total = Score()
    for reading, truth, bubbles in pairs:
        total.add(score_sheet(reading, truth, bubbles))
    return total
