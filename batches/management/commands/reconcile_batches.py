"""``manage.py reconcile_batches``: give lost work back to the workers now.

The worker processes do this themselves every ``OMR_RECOVERY_INTERVAL``
seconds (``batches/pipeline/recovery.py``); this command runs the same job
once, by hand, for batches idle for ``--idle-seconds``. Every step is
idempotent: extra messages find their work claimed or done.
"""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand

from batches.pipeline import recovery


class Command(BaseCommand):
    help = "Re-enqueue the work of batches that made no progress for a while."

    def add_arguments(self, parser):
        parser.add_argument("--idle-seconds", type=float, default=settings.OMR_RECOVERY_IDLE,
                            help="a batch with no sign of life for this long is stuck (default OMR_RECOVERY_IDLE)")

    def handle(self, idle_seconds, **options):
        done = recovery.recover(timedelta(seconds=idle_seconds))
        for line in done:
            self.stdout.write(line)
        self.stdout.write(f"{len(done)} batches reconciled")
