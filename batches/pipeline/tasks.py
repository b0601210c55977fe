"""Dramatiq actors: IDs in, the pipeline does the work.

Each actor has an explicit time limit and a retry rule (``retry_rule``): an
error of the server's own infrastructure (the database or Redis unreachable)
is retried with backoff, at most ``OMR_OUTAGE_MAX_BACKOFF_MS`` apart, for as
long as the outage lasts, up to ``OMR_OUTAGE_BUDGET_MINUTES``; any other
error a few times. The stages are idempotent, so a retry or a second delivery
does no harm. When the retries run out, ``batch_failed`` marks the batch (or
the chunk's sheets) failed with the reason.
"""

from __future__ import annotations

import logging

import dramatiq
from django.conf import settings
from django.db import transaction
from dramatiq.middleware import CurrentMessage

from .. import lifecycle
from . import fanout, stages
from .outage import infrastructure_error

logger = logging.getLogger(__name__)

MINUTE = 60_000  # Dramatiq time limits are in milliseconds


def retry_rule(other_errors: int):
    """Dramatiq's ``retry_when``: an infrastructure error is retried for as long
    as the outage budget lasts (the backoff stays at most
    ``OMR_OUTAGE_MAX_BACKOFF_MS``, so that many retries span the budget); any
    other error ``other_errors`` times."""
    def retry_when(retries: int, exception: BaseException) -> bool:
        if infrastructure_error(exception):
            return retries < settings.OMR_OUTAGE_RETRIES
        return retries < other_errors

    return retry_when


def _outage_backoff() -> int:
    return settings.OMR_OUTAGE_MAX_BACKOFF_MS


def _message():
    return CurrentMessage.get_current_message()


def _token() -> str | None:
    message = _message()
    return message.message_id if message is not None else None


@dramatiq.actor(retry_when=retry_rule(3), min_backoff=1_000, max_backoff=_outage_backoff(),
                time_limit=120 * MINUTE, on_retry_exhausted="batch_failed")
def process_batch(batch_id: str) -> None:
    """Validate, extract and create the sheets of a batch, then fan out the reading."""
    chunks = stages.start_batch(batch_id, _token())
    send_chunks(batch_id, chunks)


@dramatiq.actor(retry_when=retry_rule(5), min_backoff=1_000, max_backoff=_outage_backoff(),
                time_limit=10 * MINUTE, on_retry_exhausted="batch_failed")
def process_sheets(batch_id: str, sheet_ids: list[int]) -> None:
    """Read a few sheets; the message that stores the last one starts the finish.

    The message's options carry, from one delivery to the next, the attempt
    counts of sheets read but not stored (the database went away meanwhile),
    so that only crashes while reading count against a sheet."""
    message = _message()
    unstored = message.options.setdefault("unstored", {}) if message is not None else {}
    if fanout.process_chunk(batch_id, sheet_ids, _token(), unstored):
        transaction.on_commit(lambda: finish_batch.send(batch_id))


@dramatiq.actor(retry_when=retry_rule(3), min_backoff=1_000, max_backoff=_outage_backoff(),
                time_limit=60 * MINUTE, on_retry_exhausted="batch_failed")
def finish_batch(batch_id: str) -> None:
    """Collect the results, write the CSV, load the database and clean up."""
    stages.finish_batch(batch_id, _token())


@dramatiq.actor(max_retries=3, time_limit=1 * MINUTE)
def batch_failed(message: dict, retry_info: dict) -> None:
    """Called when an actor of a batch ran out of retries: the batch fails, saying why."""
    args = message.get("args") or [None]
    batch_id = args[0]
    if batch_id is None:
        return
    if message.get("actor_name") == "process_sheets" and len(args) > 1:
        # A chunk that cannot be stored costs its sheets, not the batch.
        if fanout.give_up_chunk(batch_id, args[1], message.get("message_id", "")):
            transaction.on_commit(lambda: finish_batch.send(batch_id))
        return
    reason = f"the server could not finish this batch after {retry_info.get('retries', 0) + 1} tries; retry it"
    logger.error("Batch %s: %s (%s)", batch_id, reason, message.get("actor_name"))
    lifecycle.fail(batch_id, reason)


def send_chunks(batch_id: str, chunks: list[list[int]]) -> None:
    """Enqueue one message per chunk of sheets, once the current transaction commits."""
    def send() -> None:
        for chunk in chunks:
            process_sheets.send(str(batch_id), chunk)

    transaction.on_commit(send)


def enqueue_batch(batch_id) -> None:
    """Start a batch's pipeline once the transaction that created it commits."""
    transaction.on_commit(lambda: process_batch.send(str(batch_id)))
