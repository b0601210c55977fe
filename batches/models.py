"""The batch server's data: batches, their sheets and answers, the progress
event log, API tokens and worker heartbeats.

The event log (``ProgressEvent``) is the source of truth for progress; the
channel layer only wakes streams up (see ``progress.py``).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Stage(models.TextChoices):
    """A batch's stages, in the order they run (docs/contracts.md)."""

    QUEUED = "queued", "Queued"
    UPLOADING = "uploading", "Uploading"
    VALIDATING = "validating", "Validating"
    EXTRACTING = "extracting", "Extracting"
    ORGANIZING_QR = "organizing_qr", "Organizing by QR code"
    CREATING_SHEETS = "creating_sheets", "Creating sheets"
    PROCESSING_SHEETS = "processing_sheets", "Processing sheets"
    COLLECTING_RESULTS = "collecting_results", "Collecting results"
    GENERATING_CSV = "generating_csv", "Generating CSV"
    LOADING_DATABASE = "loading_database", "Loading database"
    CLEANUP = "cleanup", "Cleaning up"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


#: Stages in order; ``completed`` and ``failed`` both end a batch.
STAGE_ORDER = [s.value for s in Stage if s != Stage.FAILED]
TERMINAL_STAGES = frozenset({Stage.COMPLETED.value, Stage.FAILED.value})


def stage_index(stage: str) -> int:
    """Position of ``stage`` in the run order (``failed`` sorts last)."""
    if stage == Stage.FAILED:
        return len(STAGE_ORDER)
    return STAGE_ORDER.index(stage)


def batch_upload_path(batch: Batch, filename: str) -> str:
    # Never the client's file name: only its (checked) extension survives.
    return f"batches/{batch.pk}/upload/original{batch.extension}"


class BatchManager(models.Manager):
    def recount_sheets(self, batch_id) -> dict[str, int]:
        """Set the batch's sheet counts from its sheet rows (the source of
        truth); returns them (``total``, ``processed``, ``failed``, ``review``)."""
        stats = Sheet.objects.filter(batch_id=batch_id).aggregate(
            total=models.Count("pk"),
            processed=models.Count("pk", filter=models.Q(status__in=[SheetStatus.DONE, SheetStatus.FAILED])),
            failed=models.Count("pk", filter=models.Q(status=SheetStatus.FAILED)),
            review=models.Count("pk", filter=models.Q(needs_review=True)),
        )
        self.filter(pk=batch_id).update(sheets_total=stats["total"], sheets_processed=stats["processed"],
                                        sheets_failed=stats["failed"], sheets_needs_review=stats["review"])
        return stats


class Batch(models.Model):
    """One uploaded file (ZIP, PDF, TIFF or image) and everything read from it.

    Its stage, start, finish and error change only through ``lifecycle.py``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="batches", help_text="Empty for batches run from the command line.")
    template = models.CharField(max_length=64, help_text="Sheet template name (the default for pages without QR).")
    has_qr = models.BooleanField(default=True)
    exam = models.ForeignKey("batches.Exam", null=True, blank=True, on_delete=models.SET_NULL, related_name="batches")
    original_filename = models.CharField(max_length=255, help_text="As uploaded; for display only, never a path.")
    extension = models.CharField(max_length=8, blank=True)
    upload = models.FileField(upload_to=batch_upload_path, max_length=255, blank=True)
    size = models.BigIntegerField(default=0, help_text="Upload size in bytes.")
    sha256 = models.CharField(max_length=64, blank=True)
    stage = models.CharField(max_length=32, choices=Stage.choices, default=Stage.QUEUED, db_index=True)
    sheets_total = models.IntegerField(default=0)
    sheets_processed = models.IntegerField(default=0, help_text="Sheets finished, read or failed.")
    sheets_failed = models.IntegerField(default=0)
    sheets_needs_review = models.IntegerField(default=0)
    overall_percentage = models.FloatField(default=0.0)
    results_csv = models.FileField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Throttle for processing_sheets events (claimed by a conditional UPDATE).
    progress_published_at = models.DateTimeField(null=True, blank=True)
    progress_published_count = models.IntegerField(default=0)
    # Which message runs the batch's start or finish (its Dramatiq message id)
    # and when it last said so: another message for the same run leaves it
    # alone while the claim is fresh (``pipeline/claims.py``).
    run_claim = models.CharField(max_length=64, blank=True)
    run_claimed_at = models.DateTimeField(null=True, blank=True)

    objects = BatchManager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"{self.original_filename or self.pk} ({self.stage})"

    def get_absolute_url(self) -> str:
        return reverse("batches:api-detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.stage in TERMINAL_STAGES

    @property
    def storage_prefix(self) -> str:
        """Every file of this batch lives under this storage prefix."""
        return f"batches/{self.pk}/"

    def elapsed_seconds(self, now=None) -> int:
        start = self.started_at or self.created_at
        end = self.finished_at or now or timezone.now()
        return max(0, int((end - start).total_seconds()))

    def run_seconds(self) -> float | None:
        """How long a finished batch ran, to a fraction of a second (None before it finishes)."""
        if self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - (self.started_at or self.created_at)).total_seconds())


class SheetStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


def sheet_needs_review(*, status: str, error: str, flags: list[str], engine_review: bool) -> bool:
    """The one rule for a sheet: it goes to review when its read failed or
    erred, when it carries any sheet flag (the engine's or the checks across
    pages'), or when the engine doubted its reading."""
    return bool(error or status == SheetStatus.FAILED or flags or engine_review)


class Sheet(models.Model):
    """One page of the upload: its image, its reading and where it came from."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="sheets")
    index = models.IntegerField(help_text="1-based position in the upload (file order).")
    source_name = models.CharField(max_length=300, help_text="File (or ZIP entry) the page came from; display only.")
    source_page = models.IntegerField(default=1, help_text="Page number within that file.")
    image = models.CharField(max_length=255, help_text="Storage name of the page image.")
    # A ZIP entry stored uncompressed is not copied out: its page is this
    # range of the stored upload (``image``), checked at extraction.
    image_offset = models.BigIntegerField(null=True, blank=True, help_text="Where the page starts in the "
                                          "stored file, for a page that is part of the upload.")
    image_length = models.BigIntegerField(null=True, blank=True, help_text="The page's size in bytes, for a "
                                          "page that is part of the upload.")
    status = models.CharField(max_length=16, choices=SheetStatus.choices, default=SheetStatus.PENDING)
    attempts = models.IntegerField(default=0)
    claim_token = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    template = models.CharField(max_length=64, blank=True)
    template_page = models.IntegerField(null=True, blank=True)
    qr_payload = models.CharField(max_length=300, blank=True)
    qr_error = models.CharField(max_length=300, blank=True)
    student = models.CharField(max_length=64, blank=True, db_index=True)
    exam = models.CharField(max_length=64, blank=True)
    needs_review = models.BooleanField(default=False)
    engine_review = models.BooleanField(default=False, help_text="The reading itself is in doubt (before the "
                                                                  "checks across sheets add theirs).")
    flags = models.JSONField(default=list, blank=True, help_text="Sheet-level flags.")
    error = models.TextField(blank=True)
    reading = models.JSONField(null=True, blank=True, help_text="The engine's reading, as SheetReading.to_dict().")
    read_at = models.DateTimeField(null=True, blank=True)
    # "Read again" runs in a worker: when it was asked for (until it is done),
    # and what came of the last one, for the review page.
    read_again_queued_at = models.DateTimeField(null=True, blank=True)
    read_again_note = models.CharField(max_length=300, blank=True)
    # The review queue's lease: the reviewer who has the sheet open, until when
    # (taken and renewed by conditional UPDATEs, batches/review/queue.py).
    review_holder = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+", help_text="Reviewer who has this sheet open in the queue.")
    review_token = models.CharField(max_length=32, blank=True, help_text="The reviewer's browser session "
                                    "holding the lease (one login may review in several browsers).")
    review_lease_until = models.DateTimeField(null=True, blank=True,
                                              help_text="The reviewer's lease ends then unless renewed.")

    class Meta:
        ordering = ["batch", "index"]
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="sheet_unique_index")]
        indexes = [models.Index(fields=["batch", "status"])]

    def __str__(self) -> str:
        return f"sheet {self.index} of {self.batch_id}"

    def read_image(self) -> bytes:
        """The page image's bytes: its own stored file, or its range of the
        stored upload. Raises ``OSError`` when they cannot be read whole."""
        from django.core.files.storage import default_storage

        with default_storage.open(self.image, "rb") as f:
            if self.image_length is None:
                return f.read()
            f.seek(self.image_offset or 0)
            data = f.read(self.image_length)
        if len(data) != self.image_length:
            raise OSError(errno.EIO, "the stored upload is shorter than this page's place in it")
        return data


class Answer(models.Model):
    """One field read from one sheet (a question, the student number...)."""

    sheet = models.ForeignKey(Sheet, on_delete=models.CASCADE, related_name="answers")
    field = models.CharField(max_length=64)
    value = models.CharField(max_length=64, blank=True, help_text='"A", "BD" for a multiple mark, "" for blank.')
    confidence = models.FloatField(null=True, blank=True)
    flags = models.JSONField(default=list, blank=True)
    corrected = models.BooleanField(default=False)

    class Meta:
        ordering = ["sheet", "id"]
        constraints = [models.UniqueConstraint(fields=["sheet", "field"], name="answer_unique_field")]

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}"


class Correction(models.Model):
    """A reviewer's change to one field of a sheet; the original reading stays."""

    sheet = models.ForeignKey(Sheet, on_delete=models.CASCADE, related_name="corrections")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    field = models.CharField(max_length=64)
    old_value = models.CharField(max_length=64, blank=True)
    new_value = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.field}: {self.old_value!r} -> {self.new_value!r}"


class ProgressEvent(models.Model):
    """One progress event of a batch; the stream replays these by id."""

    id = models.BigAutoField(primary_key=True)
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="events")
    stage = models.CharField(max_length=32, choices=Stage.choices)
    message = models.TextField()
    progress_percentage = models.FloatField(default=0.0)
    overall_percentage = models.FloatField(default=0.0)
    sheets_total = models.IntegerField(default=0)
    sheets_processed = models.IntegerField(default=0)
    sheets_failed = models.IntegerField(default=0)
    sheets_needs_review = models.IntegerField(default=0)
    elapsed_seconds = models.IntegerField(default=0)
    timestamp = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["batch", "id"])]

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"

    @property
    def is_terminal(self) -> bool:
        return self.stage in TERMINAL_STAGES

    def to_dict(self) -> dict:
        """The event as docs/contracts.md spells it (the SSE ``data:`` JSON)."""
        return {
            "id": self.id,
            "batch_id": str(self.batch_id),
            "stage": self.stage,
            "message": self.message,
            "progress_percentage": round(self.progress_percentage, 1),
            "overall_percentage": round(self.overall_percentage, 1),
            "sheets_total": self.sheets_total,
            "sheets_processed": self.sheets_processed,
            "sheets_failed": self.sheets_failed,
            "sheets_needs_review": self.sheets_needs_review,
            "elapsed_seconds": self.elapsed_seconds,
            # ISO 8601 in UTC with milliseconds: enough to measure publish-to-client delay.
            "timestamp": self.timestamp.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }


def hash_token(token: str) -> str:
    """API tokens are long random strings, so a plain SHA-256 is enough to store."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_expiry(now=None):
    """When an API token issued at ``now`` stops working (``OMR_API_TOKEN_DAYS``)."""
    return (now or timezone.now()) + datetime.timedelta(days=settings.OMR_API_TOKEN_DAYS)


class ApiTokenManager(models.Manager):
    def issue(self, user, name: str = "") -> tuple[ApiToken, str]:
        """Create a token for ``user``; returns the row and the token text (shown once)."""
        secret = "omr_" + secrets.token_urlsafe(32)
        row = self.create(user=user, name=name, prefix=secret[:12], digest=hash_token(secret),
                          expires_at=token_expiry())
        return row, secret


class ApiToken(models.Model):
    """A bearer token for scripts; only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="First characters, to tell tokens apart.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # A leaked token stops working by itself; tokens made before expiry existed
    # get the default lifetime from the migration on.
    expires_at = models.DateTimeField(default=token_expiry, help_text="The token is refused from then on.")

    objects = ApiTokenManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    def is_expired(self, now=None) -> bool:
        return self.expires_at <= (now or timezone.now())


class WorkerHeartbeat(models.Model):
    """A running worker process; refreshed every few seconds, removed on exit."""

    name = models.CharField(max_length=200, unique=True, help_text="host:pid")
    hostname = models.CharField(max_length=150)
    pid = models.IntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Lease(models.Model):
    """A named job that one process at a time may run: claimed by a conditional
    UPDATE while it has expired, held until ``expires_at``."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name} ({self.holder} until {self.expires_at})"


def upload_expiry(now=None):
    """When an unfinished resumable upload touched at ``now`` expires."""
    return (now or timezone.now()) + datetime.timedelta(hours=settings.OMR_UPLOAD_EXPIRY_HOURS)


class Upload(models.Model):
    """A resumable (tus 1.0) upload in progress: the bytes received so far are
    in ``MEDIA_ROOT/uploads/<id>/data``; ``offset`` is how many of them are
    durably stored. Its batch exists from the start, in stage ``uploading``,
    and gets the file when the last byte is in (``batches/tus.py``)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    batch = models.OneToOneField(Batch, on_delete=models.CASCADE, related_name="resumable_upload")
    length = models.BigIntegerField(help_text="Upload-Length: the whole file, in bytes.")
    offset = models.BigIntegerField(default=0, help_text="Bytes received and fsynced.")
    metadata = models.JSONField(default=dict, blank=True, help_text="Upload-Metadata as sent, decoded.")
    sha256 = models.CharField(max_length=64, blank=True, help_text="Whole-file checksum the client declared (hex).")
    sha1 = models.CharField(max_length=40, blank=True, help_text="Whole-file checksum the client declared (hex).")
    chunks = models.IntegerField(default=0, help_text="PATCH requests that stored bytes.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(default=upload_expiry, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Throttle for uploading events.
    progress_published_at = models.DateTimeField(null=True, blank=True)
    progress_published_percent = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"upload {self.pk} ({self.offset}/{self.length})"

    def get_absolute_url(self) -> str:
        return reverse("batches:tus-upload", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    def is_expired(self, now=None) -> bool:
        return not self.is_finished and self.expires_at <= (now or timezone.now())


class SheetTemplate(models.Model):
    """A sheet template uploaded by staff, beside the engine's built-ins: this
    project's own JSON format, or an OMRChecker ``template.json`` imported with
    its images and ``config.json`` (``batches/sheet_templates.py``)."""

    KIND_CHOICES = [("omr-template/1", "This project's template (omr-template/1)"),
                    ("omrchecker", "OMRChecker template.json")]

    name = models.CharField(max_length=64, unique=True,
                            help_text="Lower-case letters, digits, - and _; batches and QR codes use it.")
    kind = models.CharField(max_length=20, choices=KIND_CHOICES)
    description = models.CharField(max_length=200, blank=True)
    definition = models.JSONField(help_text="The parsed template as stored (images base64-encoded).")
    fields_count = models.IntegerField(default=0)
    notes = models.JSONField(default=list, blank=True, help_text="What the import noticed about the template.")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


from .exams.models import Exam, ExamChange, RosterEntry, ScoreProblem, SheetScore  # noqa: E402, F401
from .printing.models import PrintJob, PrintState  # noqa: E402, F401
