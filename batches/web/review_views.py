"""The review queue pages: every sheet that needs a person, most doubtful
first, one at a time, for one batch (``?batch=<id>``) or across the user's
batches.

Plain links and forms (it works without JavaScript); with JavaScript the
queue's links and forms go through htmx (``hx-boost``) and
``static/js/review-queue.js`` adds the keyboard. Corrections, acceptances and
undoing go through ``batches.review.queue``, itself on ``batches.review.actions``
(the admin's path), so every change is a recorded ``Correction``.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_POST

from ..models import Answer, Correction, Sheet, SheetScore
from ..omr.flags import NOT_REVIEW, Flag
from ..omr.imageio import ImageError
from ..review import actions, queue, zoom
from .auth import batches_for, get_batch_or_404
from .views import staff_required

logger = logging.getLogger(__name__)

#: Undo steps kept per session (each step: the corrections one action made).
UNDO_DEPTH = 100
UNDO_KEY = "review_undo"
REVIEWER_KEY = "review_token"
#: Widest zoomed-in field on the page, CSS px, and the most it is enlarged.
ZOOM_WIDTH = 270
ZOOM_MAX = 2.5


# ---------------------------------------------------------------- scope


class Scope:
    """The queue being worked through: one batch of the user, or all of them."""

    def __init__(self, user, batch_id=None):
        self.user = user
        self.batch = get_batch_or_404(user, batch_id) if batch_id else None

    @classmethod
    def of(cls, request) -> Scope:
        return cls(request.user, request.GET.get("batch") or request.POST.get("batch") or None)

    @property
    def batches(self):
        if self.batch is not None:
            return batches_for(self.user).filter(pk=self.batch.pk)
        return batches_for(self.user)

    def query(self, **extra) -> str:
        params = {"batch": str(self.batch.pk)} if self.batch else {}
        params.update({k: v for k, v in extra.items() if v is not None})
        return "?" + urlencode(params) if params else ""

    def url(self, name: str, *args, **extra) -> str:
        return reverse(f"batches:{name}", args=args) + self.query(**extra)

    def queue(self) -> list[queue.SheetDoubt]:
        return queue.ordered_queue(self.batches)


def reviewer_of(request) -> queue.Reviewer:
    """The user in this browser session: leases are per session, so one login
    used in two browsers is two reviewers."""
    token = request.session.get(REVIEWER_KEY)
    if not token:
        token = request.session[REVIEWER_KEY] = secrets.token_hex(16)
    return queue.Reviewer(request.user, token)


def _sheet_or_404(user, sheet_id) -> Sheet:
    return get_object_or_404(Sheet.objects.select_related("batch", "review_holder"),
                             pk=sheet_id, batch__in=batches_for(user))


# ---------------------------------------------------------------- moving through the queue


@require_GET
@staff_required
def queue_start(request, batch_id=None):
    """``/review/`` (every batch of the user) or ``/batches/<id>/review/``: the
    first sheet nobody else has open, or the empty queue."""
    scope = Scope(request.user, batch_id)
    items = scope.queue()
    sheet_id = queue.claim_next(items, reviewer_of(request))
    if sheet_id is not None:
        return redirect(scope.url("review-sheet", sheet_id))
    return render(request, "review/queue.html", _context(request, scope, items, None))


@require_GET
@staff_required
def queue_move(request, direction: str):
    """Next (``?after=<sheet>``) or previous (``?before=<sheet>``) sheet of the
    queue that nobody else has open; takes it."""
    scope = Scope.of(request)
    items = scope.queue()
    here = _int(request.GET.get("after") or request.GET.get("before"))
    reviewer = reviewer_of(request)
    if direction == "next":
        sheet_id = queue.claim_next(items, reviewer, after=here)
    else:
        sheet_id = queue.claim_next(items, reviewer, before=here)
    if sheet_id is None:
        if here is not None:
            queue.release(here, reviewer)
        return redirect(scope.url("review-queue") if scope.batch is None else scope.url("batch-review", scope.batch.pk))
    return redirect(scope.url("review-sheet", sheet_id))


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


@require_GET
@staff_required
def review_sheet(request, sheet_id: int):
    """One sheet of the queue: its page, its doubtful fields zoomed in and
    editable, its flags in words and its history. Opening it takes it, unless
    another reviewer has it open."""
    scope = Scope.of(request)
    sheet = _sheet_or_404(request.user, sheet_id)
    if scope.batch is not None and sheet.batch_id != scope.batch.pk:
        raise Http404("no such sheet in this batch")
    queue.claim(sheet.pk, reviewer_of(request))
    sheet.refresh_from_db(fields=["review_holder", "review_token", "review_lease_until"])
    return render(request, "review/queue.html", _context(request, scope, scope.queue(), sheet))


# ---------------------------------------------------------------- changes


def _posted_answers(request, sheet) -> dict[str, str]:
    """{field: value} for every ``answer-<field>`` input posted, plus the
    "another field" pair."""
    changes = {key[len("answer-"):]: value for key, value in request.POST.items() if key.startswith("answer-")}
    other = (request.POST.get("other_field") or "").strip()
    if other:
        changes[other] = request.POST.get("other_value", "")
    return changes


def _push_undo(request, made: list[Correction]) -> None:
    if not made:
        return
    steps = request.session.get(UNDO_KEY, [])
    steps.append([c.pk for c in made])
    request.session[UNDO_KEY] = steps[-UNDO_DEPTH:]


@require_POST
@staff_required
def save_sheet(request, sheet_id: int):
    """The sheet's form: ``action=save`` stores the answers typed,
    ``action=accept`` stores them and accepts the sheet as read, then goes on
    to the next sheet; ``action=field`` (htmx, one field as it changes)
    answers with the parts of the page that follow."""
    scope = Scope.of(request)
    sheet = _sheet_or_404(request.user, sheet_id)
    action = request.POST.get("action", "save")
    changes = _posted_answers(request, sheet)
    try:
        if action == "accept":
            made = queue.accept(sheet, reviewer_of(request), changes)
        else:
            made = queue.save_answers(sheet, reviewer_of(request), changes)
    except actions.ReviewError as exc:
        if action == "field":
            return _field_response(request, scope, sheet, error=str(exc), fields=list(changes))
        context = _context(request, scope, scope.queue(), sheet, error=str(exc), posted=changes)
        return render(request, "review/queue.html", context, status=409 if isinstance(exc, queue.SheetTaken) else 422)
    _push_undo(request, made)
    if action == "field":
        return _field_response(request, scope, sheet, fields=list(changes))
    if action == "accept":
        return redirect(scope.url("review-next", after=sheet.pk))
    return redirect(scope.url("review-sheet", sheet.pk))


def _field_response(request, scope, sheet, fields, error: str = "") -> HttpResponse:
    """What follows one field's change, as htmx out-of-band swaps: the field's
    state, the history, the score and the message line."""
    sheet.refresh_from_db()
    context = _context(request, scope, None, sheet, error=error, only_fields=fields)
    return HttpResponse(render_to_string("review/queue.html#field-update", context, request=request))


@require_POST
@staff_required
def undo(request):
    """Undo the user's last step in the queue (a correction or an acceptance,
    with what was saved with it); back to that sheet. The page says what was
    undone, or that there was nothing to undo (``?undone=<n>``)."""
    scope = Scope.of(request)
    back = request.POST.get("back") or scope.url("review-queue")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = scope.url("review-queue")
    steps = request.session.get(UNDO_KEY, [])
    while steps:
        ids = steps.pop()
        corrections = list(Correction.objects.filter(pk__in=ids, sheet__batch__in=batches_for(request.user))
                           .select_related("sheet").order_by("created_at", "id"))
        if not corrections:
            continue
        try:
            sheet = queue.undo(corrections, request.user)
        except actions.ReviewError as exc:
            request.session[UNDO_KEY] = steps
            logger.info("Undo refused: %s", exc)
            return redirect(_with(back, undone="-1"))
        request.session[UNDO_KEY] = steps
        queue.claim(sheet.pk, reviewer_of(request))
        if scope.batch is not None and sheet.batch_id != scope.batch.pk:
            scope = Scope(request.user, None)
        return redirect(scope.url("review-sheet", sheet.pk, undone=len(corrections)))
    request.session[UNDO_KEY] = steps
    return redirect(_with(back, undone="0"))


def _with(url: str, **params) -> str:
    """``url`` with ``params`` added to (or replacing) its query."""
    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k not in params}
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


# ---------------------------------------------------------------- lease


@require_POST
@staff_required
def renew(request, sheet_id: int):
    """The open page keeps its lease (htmx, every 30 s); when another reviewer
    took the sheet over, the answer says so."""
    sheet = _sheet_or_404(request.user, sheet_id)
    reviewer = reviewer_of(request)
    if queue.claim(sheet.pk, reviewer):
        return HttpResponse(status=204)
    sheet.refresh_from_db(fields=["review_holder", "review_token", "review_lease_until"])
    html = render_to_string("review/queue.html#taken-message", {"holder": queue.holder_of(sheet, reviewer)},
                            request=request)
    return HttpResponse(html)


@require_POST
@staff_required
def release(request, sheet_id: int):
    """The page is left: give the sheet back (``navigator.sendBeacon``)."""
    sheet = _sheet_or_404(request.user, sheet_id)
    queue.release(sheet.pk, reviewer_of(request))
    return HttpResponse(status=204)


# ---------------------------------------------------------------- picture


@require_GET
@staff_required
def sheet_picture(request, sheet_id: int):
    """The sheet's page with the reading drawn over it, upright, as a fresh PNG
    (never the uploaded file). The page's URL carries the reading's time, so
    the browser may keep it while the reading stays the same (and the page
    can fetch the next sheet's picture ahead)."""
    sheet = _sheet_or_404(request.user, sheet_id)
    try:
        picture = zoom.upright_jpeg(sheet.read_image(), sheet.reading)
    except (OSError, ImageError) as exc:
        logger.info("No picture for sheet %s: %s", sheet.pk, exc)
        return HttpResponse("This page image cannot be shown.", status=404, content_type="text/plain; charset=utf-8")
    response = HttpResponse(picture, content_type="image/jpeg")
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


# ---------------------------------------------------------------- page context


def _context(request, scope: Scope, items, sheet: Sheet | None, error: str = "", posted: dict | None = None,
             only_fields: list[str] | None = None) -> dict:
    context = {"scope": scope, "nav": "review", "error": error, "lease_minutes": queue.LEASE_SECONDS // 60}
    if items is not None:
        ids = [i.sheet_id for i in items]
        busy = queue.held_by_others(ids, reviewer_of(request))
        context.update(left=len(ids), busy=len(busy),
                       position=(ids.index(sheet.pk) + 1) if sheet is not None and sheet.pk in ids else None)
        if sheet is not None:
            # The sheet that "next" will most likely bring: its picture is fetched ahead.
            after = ids[ids.index(sheet.pk) + 1:] + ids[:ids.index(sheet.pk)] if sheet.pk in ids else ids
            upcoming = next((i for i in after if i not in busy and i != sheet.pk), None)
            if upcoming is not None:
                context["prefetch"] = picture_url(Sheet.objects.only("pk", "read_at").get(pk=upcoming))
    if request.GET.get("undone"):
        context["undone"] = _int(request.GET.get("undone"))
        context["nothing_undone"] = context["undone"] is not None and context["undone"] <= 0
    if sheet is None:
        return context
    context.update(sheet_context(sheet, posted or {}, only_fields))
    context["holder"] = queue.holder_of(sheet, reviewer_of(request))
    context["urls"] = {
        "next": scope.url("review-next", after=sheet.pk),
        "previous": scope.url("review-previous", before=sheet.pk),
        "save": scope.url("review-save", sheet.pk),
        "renew": reverse("batches:review-renew", args=[sheet.pk]),
        "release": reverse("batches:review-release", args=[sheet.pk]),
        "undo": scope.url("review-undo"),
        "here": scope.url("review-sheet", sheet.pk),
        "admin": reverse("admin:batches_sheet_change", args=[sheet.pk]),
        "batch": reverse("batches:detail", args=[sheet.batch_id]),
    }
    return context


#: Said on a sheet with a field flagged misaligned (named as its cards name it).
PLACED_APART = ("Part of this page was found apart from the rest (fields marked "
                f"“{queue.FIELD_FLAG_WORDS['misaligned']}”): check every answer on the picture, not only "
                "the fields listed.")


def sheet_context(sheet: Sheet, posted: dict, only_fields: list[str] | None = None) -> dict:
    """The sheet's flags in words, its doubtful fields (with their zoom box and
    what each accepts) and its history."""
    reading = sheet.reading or {}
    answers = list(Answer.objects.filter(sheet=sheet).order_by("id"))
    shown = [a for a in answers if (set(a.flags or []) - NOT_REVIEW) or a.corrected]
    if only_fields is not None:
        shown = [a for a in answers if a.field in only_fields]
    rules = actions.field_rules(sheet.template or sheet.batch.template, sheet.template_page)
    boxes = zoom.field_boxes(reading, [a.field for a in shown])
    geometry = zoom.picture_size(reading)
    read_values = reading.get("answers") or {}
    fields = []
    for a in shown:
        rule = rules.get(a.field)
        fields.append({
            "name": a.field,
            "value": posted.get(a.field, a.value),
            "read": read_values.get(a.field, a.value),
            "corrected": a.corrected,
            "flags": [queue.FIELD_FLAG_WORDS.get(f, f) for f in (a.flags or []) if f not in NOT_REVIEW],
            "confidence": None if a.confidence is None else round(a.confidence * 100),
            "kind": rule.kind if rule else "text",
            "allowed": _allowed(rule),
            "maxlength": _maxlength(rule),
            "zoom": _zoom_style(boxes.get(a.field), geometry),
        })
    flags = [queue.SHEET_FLAG_WORDS.get(f, f.replace("_", " ")) for f in (sheet.flags or [])]
    if any(Flag.MISALIGNED in (a.flags or []) for a in answers):
        # A block placed apart from the rest of the page may have neighbours
        # placed a row or a column off without a flag of their own.
        flags.append(PLACED_APART)
    picture = picture_url(sheet) if sheet.image else None
    return {
        "sheet": sheet,
        "score": score_of(sheet),
        "fields": fields,
        "other_fields": [a.field for a in answers if a.field not in {f["name"] for f in fields}],
        "sheet_flags": flags,
        "history": [(c, queue.describe(c)) for c in queue.history(sheet)],
        "picture": picture,
        "picture_size": geometry,
        "student": sheet.student,
    }


def picture_url(sheet: Sheet) -> str:
    """The picture's URL, which changes when the sheet is read again."""
    version = int(sheet.read_at.timestamp()) if sheet.read_at else 0
    return reverse("batches:review-picture", args=[sheet.pk]) + f"?v={version}"


def score_of(sheet: Sheet) -> SheetScore | None:
    """The exam score of the student's sheet this page is part of, if its
    batch was uploaded for an exam (re-scored by every correction)."""
    row = SheetScore.objects.select_related("exam", "roster_entry").filter(sheet_id=sheet.pk).first()
    if row is None and sheet.batch.exam_id:
        # A later page of a multi-page sheet: its score row names it among its pages.
        candidates = SheetScore.objects.select_related("exam", "roster_entry").filter(batch_id=sheet.batch_id,
                                                                                      student=sheet.student)
        row = next((c for c in candidates if sheet.pk in (c.pages or [])), None)
    return row


def _allowed(rule) -> str:
    """The characters a field takes, for the page's key filter."""
    if rule is None or rule.kind == "text":
        return ""
    if rule.kind == "digit":
        return "0123456789"
    return "".join(v.upper() for v in rule.values)


def _maxlength(rule) -> int:
    if rule is None or rule.kind == "text":
        return 64
    if rule.kind == "digit":
        return rule.columns
    if rule.kind == "choice":
        return max((len(v) for v in rule.values), default=1)
    return len(rule.values)


def _zoom_style(box, geometry) -> dict | None:
    """The zoomed-in view of ``box``: a window onto the page picture (the one
    the page shows already, so no new request), enlarged, and turned so the
    field's rows are straight. CSS values for the template."""
    if box is None or geometry is None or box.w <= 0 or box.h <= 0:
        return None
    k = min(ZOOM_MAX, ZOOM_WIDTH / box.w)
    return {
        "window": f"width:{box.w * k:.0f}px;height:{box.h * k:.0f}px",
        "picture": (f"width:{geometry[0] * k:.0f}px;height:{geometry[1] * k:.0f}px;"
                    f"left:{box.w * k / 2 - box.cx * k:.1f}px;top:{box.h * k / 2 - box.cy * k:.1f}px;"
                    f"transform-origin:{box.cx * k:.1f}px {box.cy * k:.1f}px;transform:rotate({-box.angle:.2f}deg)"),
    }
