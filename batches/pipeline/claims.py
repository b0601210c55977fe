"""Who runs what: a batch's start and finish are claimed by the message that
runs them, and a periodic job by the process whose turn it is. Each claim is
one conditional UPDATE, so of two contenders exactly one wins.

A batch's claim names a message id (the same when Dramatiq delivers that
message again after its worker died), so the message's own redelivery goes
on, while another message for the same batch (a duplicate send, or work
re-sent by the recovery job) finds it held and stops. The holder renews the
claim as it goes; a claim not renewed for ``RUN_LEASE`` has lost its holder
and may be taken over.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone

from ..models import Batch, Lease

#: A start or finish claim not renewed for this long is free again. The
#: holder renews it at every stage and progress event (every few seconds).
RUN_LEASE = timedelta(minutes=5)


def claim_run(batch: Batch, token: str) -> bool:
    """Claim ``batch``'s start or finish for the message ``token``: free, already
    this message's, or expired. Sets ``batch.run_claim`` when won."""
    now = timezone.now()
    won = Batch.objects.filter(pk=batch.pk).filter(
        Q(run_claim="") | Q(run_claim=token) | Q(run_claimed_at__lt=now - RUN_LEASE)
    ).update(run_claim=token, run_claimed_at=now)
    if won:
        batch.run_claim, batch.run_claimed_at = token, now
    return bool(won)


def renew_run(batch: Batch) -> bool:
    """Say the holder of ``batch``'s claim is still at work; False when the claim
    was taken over meanwhile (the holder should stop)."""
    return bool(Batch.objects.filter(pk=batch.pk, run_claim=batch.run_claim).update(run_claimed_at=timezone.now()))


def release_run(batch: Batch) -> None:
    """Free the claim, so that the next part of the run (the finish) can take it."""
    Batch.objects.filter(pk=batch.pk, run_claim=batch.run_claim).update(run_claim="", run_claimed_at=None)
    batch.run_claim = ""


def take_lease(name: str, holder: str, seconds: float) -> bool:
    """Take the named lease for ``seconds`` when it has expired: True for the one
    process whose turn it is."""
    now = timezone.now()
    if not Lease.objects.filter(name=name).exists():
        try:
            Lease.objects.create(name=name, holder="", expires_at=now - timedelta(seconds=1))
        except IntegrityError:
            pass  # created by another process meanwhile
    return bool(Lease.objects.filter(name=name, expires_at__lte=now)
                .update(holder=holder[:200], expires_at=now + timedelta(seconds=seconds)))
