"""The review's work that runs in a worker, not in a web request: reading a
sheet again (the engine takes a while a page, and a stuck page must not hold a
web process). The page that asked shows "queued" until the note is written."""

from __future__ import annotations

import logging

import dramatiq
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from ..models import Sheet, SheetStatus
from . import actions

logger = logging.getLogger(__name__)

MINUTE = 60_000  # Dramatiq time limits are in milliseconds


@dramatiq.actor(max_retries=2, min_backoff=2_000, time_limit=5 * MINUTE, on_retry_exhausted="read_again_gave_up")
def read_sheet_again(sheet_id: int, user_id: int | None = None) -> None:
    """Read one sheet again (``actions.read_again``) and leave a note saying how it went."""
    sheet = Sheet.objects.filter(pk=sheet_id).first()
    if sheet is None:
        return  # its batch was deleted meanwhile
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    try:
        sheet = actions.read_again(sheet, user)
    except actions.ReviewError as exc:
        note = f"Not read again: {exc}"
    else:
        if sheet.status == SheetStatus.FAILED:
            note = f"Read again: failed ({sheet.error})"
        else:
            note = "Read again: " + ("needs review" if sheet.needs_review else "no doubt left")
    _finish(sheet_id, note)


@dramatiq.actor(max_retries=3, time_limit=1 * MINUTE)
def read_again_gave_up(message: dict, retry_info: dict) -> None:
    args = message.get("args") or [None]
    if args[0] is not None:
        _finish(args[0], "Not read again: the server could not read this page (try again later)")


def _finish(sheet_id: int, note: str) -> None:
    Sheet.objects.filter(pk=sheet_id).update(read_again_queued_at=None, read_again_note=note[:300])
    logger.info("Sheet %s: %s", sheet_id, note)


def queue_read_again(sheets: list[Sheet], user) -> int:
    """Queue ``sheets`` to be read again by a worker; returns how many were
    queued. Raises ``actions.ReviewError`` when a batch is still running."""
    for sheet in sheets:
        actions.check_finished(sheet.batch)
    now = timezone.now()
    ids = [s.pk for s in sheets]
    user_id = getattr(user, "pk", None)

    def send() -> None:
        for pk in ids:
            read_sheet_again.send(pk, user_id)

    with transaction.atomic():
        Sheet.objects.filter(pk__in=ids).update(read_again_queued_at=now, read_again_note="")
        transaction.on_commit(send)
    return len(ids)
