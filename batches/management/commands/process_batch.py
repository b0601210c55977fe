"""``manage.py process_batch FILE --template T [--no-qr] [--csv out.csv]``: run the
same pipeline as the workers, in this process, with a progress bar."""

import shutil
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError

from batches.models import Stage
from batches.pipeline import stages
from batches.uploads import accept


class Command(BaseCommand):
    help = "Read a ZIP, PDF, TIFF or image of answer sheets in this process and write the results."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--template", default=settings.OMR_DEFAULT_TEMPLATE)
        parser.add_argument("--no-qr", action="store_true", help="the sheets have no QR codes")
        parser.add_argument("--csv", type=Path, help="write the results CSV here")
        parser.add_argument("--user", help="owner of the batch (default: none; superusers see it)")

    def handle(self, file, template, no_qr, csv, user, **options):
        if not file.is_file():
            raise CommandError(f"no file {file}")
        owner = None
        if user:
            User = get_user_model()
            owner = User.objects.filter(username=user).first()
            if owner is None:
                raise CommandError(f"no user {user!r}")
        with file.open("rb") as f:
            try:
                batch = accept.create_batch(owner, File(f, name=file.name), filename=file.name, template=template,
                                              has_qr=not no_qr, start=False)
            except accept.ServiceError as exc:
                raise CommandError(exc.message) from None
        self.stderr.write(f"Batch {batch.pk}: {file.name}")
        interactive = sys.stderr.isatty()

        def bar(b):
            done, total = b.sheets_processed, max(b.sheets_total, 1)
            filled = int(30 * done / total)
            line = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{b.sheets_total} sheets, {b.sheets_failed} failed"
            self.stderr.write(("\r" + line) if interactive else line, ending="" if interactive else "\n")

        batch = stages.run_inline(batch.pk, on_chunk=bar)
        if interactive:
            self.stderr.write("")
        for event in batch.events.order_by("id"):
            if event.stage != Stage.PROCESSING_SHEETS or event.progress_percentage in (0, 100):
                self.stderr.write(f"  {event.overall_percentage:5.1f}%  {event.stage:18}  {event.message}")
        if batch.stage != Stage.COMPLETED:
            raise CommandError(f"batch failed: {batch.error}")
        if csv:
            with default_storage.open(batch.results_csv.name, "rb") as src, csv.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            self.stderr.write(f"Results written to {csv}")
        self.stdout.write(str(batch.pk))
