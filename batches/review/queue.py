"""The review queue: which sheets need a person, most doubtful first, and
which reviewer has which one open.

Order (``doubt_key``): sheets the reader could not read at all come first,
then sheets whose whole reading is in question (misaligned, wrong or unknown
template, unknown page), then sheets with another sheet-level problem (QR
code, duplicate or missing page, low contrast), then sheets with doubtful
fields only. Within each of these, the sheet with more doubt comes first: the
sum over its doubtful fields not yet corrected of the flag's weight times how
unsure the reader was (1 - confidence); ties go to the lowest confidence,
then to upload order.

Leases: a reviewer (a login in one browser session) who opens a sheet takes it for ``LEASE_SECONDS`` with one
conditional UPDATE (the sheet is free, theirs already, or its lease ran
out), so two reviewers never hold the same sheet: the database lets one
UPDATE through and the other finds the row taken and moves to the next
sheet. The page renews the lease while it is open and gives it back when
the reviewer leaves or accepts the sheet. A reviewer holds one sheet at a
time: taking a sheet gives back any other.

Every change goes through ``actions`` (corrections and acceptances are
``Correction`` rows), so the admin review and the queue behave the same.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Case, Count, ExpressionWrapper, FloatField, Min, Q, Sum, TextField, Value, When
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from ..models import TERMINAL_STAGES, Answer, Correction, Sheet, SheetStatus
from ..omr.flags import NOT_REVIEW
from . import actions

#: How long a reviewer keeps a sheet without the page renewing it.
LEASE_SECONDS = 120

#: Sheet flags that put the whole reading in question (after a failed read).
WHOLE_READING_FLAGS = frozenset({"misaligned", "wrong_template", "unknown_template", "page_unknown"})
#: Sheet flags meaning nothing was read.
UNREAD_FLAGS = frozenset({"unreadable", "not_a_sheet"})

#: How much a field flag weighs in a sheet's doubt: a double mark is an answer
#: the reader cannot give; a grey mark or an erasure may go either way; a faint
#: mark, a gap in a number or a circled bubble is usually read right.
FIELD_FLAG_WEIGHTS = {"multiple": 3.0, "ambiguous": 2.0, "erasure": 2.0, "misaligned": 2.0, "faint": 1.5,
                      "gap": 1.5, "circled": 1.0}
OTHER_FLAG_WEIGHT = 1.0

#: Sheet flags in plain words.
SHEET_FLAG_WORDS = {
    "unreadable": "The page could not be read: not an image, blank or too small.",
    "not_a_sheet": "No registration marks were found: this may not be an answer sheet.",
    "misaligned": "The bubbles are not where the template puts them: check every answer.",
    "wrong_template": "The page does not match the template it was read with.",
    "unknown_template": "The QR code names a template this server does not know.",
    "page_unknown": "Which page of the sheet this is could not be told.",
    "qr_missing": "No QR code was found on the page.",
    "qr_damaged": "The QR code could not be decoded.",
    "qr_foreign": "The QR code is not one this server printed.",
    "low_contrast": "The print is barely darker than the paper.",
    "duplicate_page": "The same page of this student was uploaded twice.",
    "missing_page": "Other pages of this student's sheet are missing.",
    "extra_pages": "This student has more pages than the sheet.",
}

#: Field flags in plain words.
FIELD_FLAG_WORDS = {
    "multiple": "more than one bubble marked",
    "ambiguous": "a mark between blank and filled",
    "faint": "a very light mark",
    "erasure": "an erasure or a smudge",
    "circled": "a bubble circled, not filled",
    "misaligned": "bubbles not where expected",
    "gap": "a blank column inside the number",
    "blank": "nothing marked",
}


# ---------------------------------------------------------------- order


@dataclass
class SheetDoubt:
    """What makes one sheet doubtful, for ordering and for the page."""

    sheet_id: int
    tier: int
    doubt: float = 0.0
    min_confidence: float = 1.0
    fields: int = 0  # doubtful fields not yet corrected


def sheet_tier(status: str, error: str, flags: list[str]) -> int:
    """0: nothing read; 1: the whole reading in question; 2: another sheet
    problem; 3: doubtful fields only."""
    flags = set(flags or [])
    if status == SheetStatus.FAILED or error or flags & UNREAD_FLAGS:
        return 0
    if flags & WHOLE_READING_FLAGS:
        return 1
    if flags:
        return 2
    return 3


def field_doubt(flags: list[str], confidence: float | None) -> float:
    """One doubtful field's share of its sheet's doubt."""
    weight = max((FIELD_FLAG_WEIGHTS.get(f, OTHER_FLAG_WEIGHT) for f in flags if f not in NOT_REVIEW), default=0.0)
    unsure = 1.0 - (0.5 if confidence is None else min(max(confidence, 0.0), 1.0))
    return weight * unsure


def _flags_text():
    # Flags are JSON lists; their text is the same on SQLite and PostgreSQL.
    return Cast("flags", TextField())


def _flag_weight():
    """``field_doubt``'s weight in SQL: the heaviest flag of the answer."""
    whens = []
    for weight in sorted(set(FIELD_FLAG_WEIGHTS.values()), reverse=True):
        named = Q()
        for name in (f for f, w in FIELD_FLAG_WEIGHTS.items() if w == weight):
            named |= Q(flags_text__contains=f'"{name}"')
        whens.append(When(named, then=Value(weight)))
    return Case(*whens, default=Value(OTHER_FLAG_WEIGHT), output_field=FloatField())


def doubt_by_sheet(sheets) -> dict[int, tuple[float, float, int]]:
    """{sheet id: (doubt, lowest confidence, doubtful fields)} for the sheets
    of the queryset ``sheets``, over their answers flagged with more than a
    plain blank and not corrected by a person: one grouped query (a 2,000-sheet
    queue holds some 40,000 such answers)."""
    confidence = Coalesce("confidence", Value(0.5), output_field=FloatField())
    rows = (Answer.objects.filter(sheet__in=sheets.values("pk"), corrected=False)
            .annotate(flags_text=_flags_text()).exclude(flags_text__in=["[]", '["blank"]'])
            .values("sheet_id")
            .annotate(doubt=Sum(ExpressionWrapper(_flag_weight() * (Value(1.0) - confidence),
                                                  output_field=FloatField())),
                      low=Min(confidence), fields=Count("id"))
            .values_list("sheet_id", "doubt", "low", "fields"))
    return {sheet_id: (doubt, low, fields) for sheet_id, doubt, low, fields in rows}


def doubt_key(item: SheetDoubt, created_at, index: int) -> tuple:
    return (item.tier, -round(item.doubt, 6), item.min_confidence, created_at, index)


def sheets_in_review(batches):
    """The sheets of ``batches`` (a queryset) waiting for a person; only
    finished batches can be corrected, so only theirs."""
    return Sheet.objects.filter(batch__in=batches, batch__stage__in=TERMINAL_STAGES, needs_review=True)


def ordered_queue(batches) -> list[SheetDoubt]:
    """Every sheet of ``batches`` that needs review, most doubtful first."""
    sheets = sheets_in_review(batches)
    rows = list(sheets.values_list("pk", "status", "error", "flags", "batch__created_at", "index"))
    doubts = doubt_by_sheet(sheets)
    keyed = []
    for pk, status, error, flags, created_at, index in rows:
        doubt, low, fields = doubts.get(pk, (0.0, 1.0, 0))
        item = SheetDoubt(pk, sheet_tier(status, error, flags), doubt, low, fields)
        keyed.append((doubt_key(item, created_at, index), item))
    keyed.sort(key=lambda pair: pair[0])
    return [item for _key, item in keyed]


# ---------------------------------------------------------------- leases


@dataclass(frozen=True)
class Reviewer:
    """Who holds a lease: a login and the browser session it reviews from
    (one login shared by several people reviews from several browsers)."""

    user: object
    token: str


def _free_for(reviewer: Reviewer, now) -> Q:
    return Q(review_token="") | Q(review_token=reviewer.token) | Q(review_lease_until__lte=now)


def held_by_others(sheet_ids, reviewer: Reviewer, now=None) -> set[int]:
    """The sheets among ``sheet_ids`` another reviewer holds right now."""
    now = now or timezone.now()
    return set(Sheet.objects.filter(pk__in=sheet_ids, review_lease_until__gt=now).exclude(review_token="")
               .exclude(review_token=reviewer.token).values_list("pk", flat=True))


def claim(sheet_id: int, reviewer: Reviewer, now=None) -> bool:
    """Take ``sheet_id`` for ``reviewer`` (or renew their lease) unless
    another reviewer holds it; gives back any other sheet ``reviewer`` held.
    True when ``reviewer`` now holds it."""
    now = now or timezone.now()
    with transaction.atomic():
        taken = (Sheet.objects.filter(pk=sheet_id).filter(_free_for(reviewer, now))
                 .update(review_holder=reviewer.user, review_token=reviewer.token,
                         review_lease_until=now + datetime.timedelta(seconds=LEASE_SECONDS)))
        if taken:
            (Sheet.objects.filter(review_token=reviewer.token).exclude(pk=sheet_id)
             .update(review_holder=None, review_token="", review_lease_until=None))
    return bool(taken)


def release(sheet_id: int, reviewer: Reviewer) -> bool:
    """Give ``sheet_id`` back, if ``reviewer`` holds it."""
    return bool(Sheet.objects.filter(pk=sheet_id, review_token=reviewer.token)
                .update(review_holder=None, review_token="", review_lease_until=None))


def claim_next(queue: list[SheetDoubt], reviewer: Reviewer, after: int | None = None, before: int | None = None,
               now=None) -> int | None:
    """Take the first sheet of ``queue`` that no other reviewer holds: after
    sheet ``after`` (wrapping round), or the last one before ``before``
    (previous), or from the top. Returns its id, or None when every sheet left
    is held by someone else."""
    ids = [item.sheet_id for item in queue]
    if before is not None and before in ids:
        at = ids.index(before)
        ids = list(reversed(ids[:at])) + list(reversed(ids[at + 1:]))
    elif after is not None and after in ids:
        at = ids.index(after)
        ids = ids[at + 1:] + ids[:at]
    busy = held_by_others(ids, reviewer, now)
    for sheet_id in ids:
        if sheet_id in busy:
            continue
        # Another reviewer may take it between the look and the UPDATE: the
        # UPDATE decides, and a lost race moves on to the next sheet.
        if claim(sheet_id, reviewer, now):
            return sheet_id
    return None


def holder_of(sheet: Sheet, reviewer: Reviewer, now=None):
    """The login name of another reviewer holding ``sheet`` right now (it may
    be ``reviewer``'s own login, in another browser), or None."""
    now = now or timezone.now()
    if (sheet.review_token and sheet.review_token != reviewer.token and sheet.review_lease_until
            and sheet.review_lease_until > now):
        return sheet.review_holder.get_username() if sheet.review_holder else "another reviewer"
    return None


# ---------------------------------------------------------------- changes


class SheetTaken(actions.ReviewError):
    """Another reviewer holds the sheet."""


def _check_lease(sheet: Sheet, reviewer: Reviewer) -> None:
    if not claim(sheet.pk, reviewer):
        sheet.refresh_from_db(fields=["review_holder", "review_lease_until"])
        who = sheet.review_holder.get_username() if sheet.review_holder else "another reviewer"
        raise SheetTaken(f"{who} has this sheet open in another window; it was left as it is")


def save_answers(sheet: Sheet, reviewer: Reviewer, changes: dict[str, str]) -> list[Correction]:
    """Corrections from the queue: through ``actions.apply_corrections``, while
    ``reviewer`` holds the sheet (another reviewer's open sheet is refused)."""
    _check_lease(sheet, reviewer)
    return actions.apply_corrections(sheet, reviewer.user, changes)


@transaction.atomic
def accept(sheet: Sheet, reviewer: Reviewer, changes: dict[str, str] | None = None) -> list[Correction]:
    """Save ``changes``, then accept the sheet as read: it leaves the review
    (a recorded change of ``needs_review``) and its lease is given back.
    Returns every correction made, the acceptance last."""
    made = save_answers(sheet, reviewer, changes or {})
    accepted = actions.set_needs_review(sheet, reviewer.user, False)
    if accepted is not None:
        made.append(accepted)
    release(sheet.pk, reviewer)
    return made


@transaction.atomic
def undo(corrections: list[Correction], user) -> Sheet | None:
    """Put back what ``corrections`` (one step, oldest first) changed, newest
    first; each undoing is itself a recorded correction. Returns the sheet."""
    sheet = None
    for c in reversed(corrections):
        sheet = c.sheet
        if c.field == actions.NEEDS_REVIEW_FIELD:
            actions.set_needs_review(sheet, user, c.old_value == "true")
        else:
            actions.apply_corrections(sheet, user, {c.field: c.old_value})
    return sheet


def history(sheet: Sheet) -> list[Correction]:
    """Every correction and acceptance of ``sheet``, newest first."""
    return list(Correction.objects.filter(sheet=sheet).select_related("user").order_by("-created_at", "-id"))


def describe(correction: Correction) -> str:
    """One line of a sheet's history in plain words."""
    if correction.field == actions.NEEDS_REVIEW_FIELD:
        return "accepted as read" if correction.new_value == "false" else "put back in review"
    old = correction.old_value or "blank"
    new = correction.new_value or "blank"
    return f"{correction.field}: {old} → {new}"
