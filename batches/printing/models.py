"""A print run built in a worker: what was asked, how far it got, and the PDF
it left in storage until it expires."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class PrintState(models.TextChoices):
    QUEUED = "queued", "Waiting for a worker"
    RUNNING = "running", "Being built"
    DONE = "done", "Ready"
    FAILED = "failed", "Failed"


class PrintJob(models.Model):
    """A PDF of answer sheets too large to build in the request (a roster of
    hundreds or thousands): built by the ``build_print`` actor, stored under
    the exam's folder, downloadable until ``expires_at``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="print_jobs")
    exam = models.ForeignKey("batches.Exam", null=True, blank=True, on_delete=models.CASCADE,
                             related_name="print_jobs")
    template = models.CharField(max_length=64)
    options = models.JSONField(default=dict, help_text='{"roster": bool, "order": "group"|"imported", "blanks": n}')
    state = models.CharField(max_length=16, choices=PrintState.choices, default=PrintState.QUEUED)
    sheets_total = models.IntegerField(default=0)
    sheets_done = models.IntegerField(default=0)
    pages = models.IntegerField(default=0)
    file = models.CharField(max_length=255, blank=True, help_text="Storage name of the PDF once built.")
    filename = models.CharField(max_length=255, help_text="The name the download is offered under.")
    size = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(help_text="The PDF and this row are removed by cleanup_uploads after this.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.filename} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in (PrintState.DONE, PrintState.FAILED)

    @property
    def percent(self) -> int:
        if self.state == PrintState.DONE:
            return 100
        return int(100 * self.sheets_done / self.sheets_total) if self.sheets_total else 0
