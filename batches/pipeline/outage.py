"""Telling the server's own trouble from a problem with the work: an error of
the database or of Redis (unreachable, restarting, connection lost) is an
outage, retried for as long as it lasts; it never fails a sheet."""

from __future__ import annotations

import django.db
import dramatiq.errors
import redis.exceptions

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    django.db.OperationalError,  # connection refused or lost, server restarting, too many clients
    django.db.InterfaceError,  # a connection already closed under the ORM
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    dramatiq.errors.BrokerConnectionError,
    ConnectionError,
    TimeoutError,
)


def infrastructure_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is an outage of the
    database or the broker, not something about the work itself."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
