"""The print actor: a job id in, ``services.run_job`` does the work."""

from __future__ import annotations

import logging

import dramatiq

from . import services

logger = logging.getLogger(__name__)

MINUTE = 60_000  # Dramatiq time limits are in milliseconds


@dramatiq.actor(max_retries=2, min_backoff=2_000, time_limit=20 * MINUTE, on_retry_exhausted="print_failed")
def build_print(job_id: str) -> None:
    """Build a print job's PDF (2,000 students take well under a minute; see bench/printing.py)."""
    services.run_job(job_id)


@dramatiq.actor(max_retries=3, time_limit=1 * MINUTE)
def print_failed(message: dict, retry_info: dict) -> None:
    """``build_print`` ran out of retries: the job fails, saying so."""
    job_id = (message.get("args") or [None])[0]
    if job_id is not None:
        logger.error("Print %s failed after %d tries", job_id, retry_info.get("retries", 0) + 1)
        services.fail_job(job_id, "the server could not build this PDF; try again, or print fewer sheets at once")
