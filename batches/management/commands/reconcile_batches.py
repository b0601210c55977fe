"""``manage.py reconcile_batches``: give lost work back to the workers.

After a Redis restart (its queue lost) or workers that vanished, a batch can
wait forever for messages nobody holds. This looks in the database, the
source of truth: batches stuck in a stage re-run from it, and sheets nobody is
reading are sent out again. Every step is idempotent, so running it while
the workers are fine does no harm beyond duplicate messages that find their
work already done.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from batches.models import Batch, ProgressEvent, Stage
from batches.pipeline import fanout, tasks


class Command(BaseCommand):
    help = "Re-enqueue the work of batches that made no progress for a while."

    def add_arguments(self, parser):
        parser.add_argument("--idle-minutes", type=float, default=15.0,
                            help="a batch with no progress event for this long is stuck")

    def handle(self, idle_minutes, **options):
        idle = timedelta(minutes=idle_minutes)
        cutoff = timezone.now() - idle
        count = 0
        # A batch still uploading without its file is a resumable upload in
        # progress: nothing to restart (cleanup_uploads expires it).
        batches = Batch.objects.exclude(stage__in=[Stage.COMPLETED, Stage.FAILED]).exclude(
            stage=Stage.UPLOADING, upload="")
        for batch in batches:
            last = ProgressEvent.objects.filter(batch=batch).order_by("-id").values_list("timestamp", flat=True).first()
            if last and last > cutoff:
                continue
            if batch.stage == Stage.PROCESSING_SHEETS:
                chunks = fanout.stale_chunks(batch.pk, older_than=idle)
                tasks.send_chunks(str(batch.pk), chunks)
                self.stdout.write(f"{batch.pk}: {sum(map(len, chunks))} sheets sent again")
            elif batch.stage in {Stage.COLLECTING_RESULTS, Stage.GENERATING_CSV, Stage.LOADING_DATABASE,
                                 Stage.CLEANUP}:
                tasks.finish_batch.send(str(batch.pk))
                self.stdout.write(f"{batch.pk}: finishing again from {batch.stage}")
            else:
                tasks.process_batch.send(str(batch.pk))
                self.stdout.write(f"{batch.pk}: started again from {batch.stage}")
            count += 1
        self.stdout.write(f"{count} batches reconciled")
