"""Dramatiq actors: IDs in, the pipeline does the work.

Each actor has an explicit retry count and time limit. A passing database or
Redis error raises, and Dramatiq retries with backoff; the stages are
idempotent, so a retry or a second delivery does no harm. When the retries
run out, ``batch_failed`` marks the batch failed with the reason.
"""

from __future__ import annotations

import logging

import dramatiq
from django.db import transaction
from dramatiq.middleware import CurrentMessage

from .. import lifecycle
from . import fanout, stages

logger = logging.getLogger(__name__)

MINUTE = 60_000  # Dramatiq time limits are in milliseconds


@dramatiq.actor(max_retries=3, min_backoff=2_000, time_limit=120 * MINUTE, on_retry_exhausted="batch_failed")
def process_batch(batch_id: str) -> None:
    """Validate, extract and create the sheets of a batch, then fan out the reading."""
    chunks = stages.start_batch(batch_id)
    send_chunks(batch_id, chunks)


@dramatiq.actor(max_retries=5, min_backoff=1_000, time_limit=10 * MINUTE, on_retry_exhausted="batch_failed")
def process_sheets(batch_id: str, sheet_ids: list[int]) -> None:
    """Read a few sheets; the message that stores the last one starts the finish."""
    message = CurrentMessage.get_current_message()
    token = message.message_id if message is not None else None
    if fanout.process_chunk(batch_id, sheet_ids, token):
        transaction.on_commit(lambda: finish_batch.send(batch_id))


@dramatiq.actor(max_retries=3, min_backoff=2_000, time_limit=60 * MINUTE, on_retry_exhausted="batch_failed")
def finish_batch(batch_id: str) -> None:
    """Collect the results, write the CSV, load the database and clean up."""
    stages.finish_batch(batch_id)


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
    reason = f"the server could not finish this batch after {retry_info.get('retries', 0) + 1} tries"
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
