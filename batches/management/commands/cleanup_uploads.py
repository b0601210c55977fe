"""``manage.py cleanup_uploads``: remove what nobody will come back for.

- Resumable uploads that expired unfinished (``OMR_UPLOAD_EXPIRY_HOURS`` after
  their last chunk): their bytes and their row; their batch, which never got a
  file, is marked failed with the reason, so its owner sees what happened.
- Uploads whose last byte is stored but whose file never reached its batch
  (the server died in between): finished now.
- Printed-sheet PDFs built by a worker, once they expire
  (``OMR_PRINT_EXPIRY_HOURS`` after they were built): the file and the job.
- Folders under ``MEDIA_ROOT/uploads/`` and ``MEDIA_ROOT/batches/`` whose
  upload or batch no longer exists (a batch deleted while a worker still wrote
  to it, a finished upload's empty folder, a crash between the two).

Run it from cron or a systemd timer (README, "Cleaning up"); ``--dry-run``
prints the same list and removes nothing.
"""

from __future__ import annotations

import datetime
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from batches import lifecycle
from batches.models import Batch, PrintJob, Upload
from batches.printing.services import delete_job
from batches.uploads.tus import TusError, complete_stalled, locked, upload_dir


class Command(BaseCommand):
    help = ("Remove expired unfinished uploads, expired printed-sheet PDFs, and the files of uploads and batches "
            "that no longer exist.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
        parser.add_argument("--grace-minutes", type=float, default=10.0,
                            help="leave folders younger than this alone (a row may be about to commit)")

    def handle(self, dry_run, grace_minutes, **options):
        verb = "would remove" if dry_run else "removed"
        now = timezone.now()
        expired = 0
        for upload in Upload.objects.filter(finished_at__isnull=True, expires_at__lte=now).select_related("batch"):
            if not dry_run and not self.expire(upload):
                continue
            expired += 1
            self.stdout.write(f"{verb} expired upload {upload.pk} ({upload.offset} of {upload.length} bytes, "
                              f"expired {upload.expires_at:%Y-%m-%d %H:%M} UTC, batch {upload.batch_id})")
        young = now - datetime.timedelta(minutes=grace_minutes)
        # Every byte in, but the server died before handing the file over.
        for upload in Upload.objects.filter(finished_at__isnull=True, offset=F("length"), updated_at__lte=young,
                                            expires_at__gt=now).select_related("batch"):
            self.stdout.write(f"{'would finish' if dry_run else 'finished'} complete upload {upload.pk} "
                              f"(batch {upload.batch_id})")
            if not dry_run:
                complete_stalled(upload)
        prints = 0
        for job in PrintJob.objects.filter(expires_at__lte=now):
            prints += 1
            self.stdout.write(f"{verb} expired print {job.pk} ({job.filename}, {job.state})")
            if not dry_run:
                delete_job(job)
        orphans = 0
        media = Path(settings.MEDIA_ROOT)
        for kind, model in (("uploads", Upload), ("batches", Batch)):
            for folder in sorted((media / kind).glob("*")) if (media / kind).is_dir() else []:
                try:
                    key = uuid.UUID(folder.name)
                except ValueError:
                    continue  # not ours: never touch what we did not name
                if not folder.is_dir() or model.objects.filter(pk=key).exists():
                    continue
                if datetime.datetime.fromtimestamp(folder.stat().st_mtime, tz=datetime.UTC) > young:
                    continue
                orphans += 1
                self.stdout.write(f"{verb} {kind}/{folder.name}/ (no such {model.__name__.lower()})")
                if not dry_run:
                    shutil.rmtree(folder, ignore_errors=True)
        self.stdout.write(f"{expired} expired uploads, {prints} expired prints, {orphans} orphaned folders {verb}")

    def expire(self, upload: Upload) -> bool:
        """Remove one expired upload; False when a chunk is being written to it
        right now (it is alive after all)."""
        message = (f"the upload expired unfinished: {upload.offset} of {upload.length} bytes had arrived "
                   f"when no chunk came for {settings.OMR_UPLOAD_EXPIRY_HOURS:g} hours; upload the file again")
        try:
            with locked(upload.pk):
                with transaction.atomic():
                    if Upload.objects.filter(pk=upload.pk, finished_at__isnull=True,
                                             expires_at__lte=timezone.now()).delete()[0] == 0:
                        return False
                    lifecycle.fail_upload(upload.batch, message)
        except TusError as exc:
            if exc.status == 423:
                return False
            # 404: its folder is already gone; the row still has to go.
            with transaction.atomic():
                Upload.objects.filter(pk=upload.pk).delete()
                lifecycle.fail_upload(upload.batch, message)
        shutil.rmtree(upload_dir(upload.pk), ignore_errors=True)
        return True
