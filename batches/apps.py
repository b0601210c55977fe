from django.apps import AppConfig


class BatchesConfig(AppConfig):
    """Batches of scanned answer sheets: upload, pipeline, progress, results."""

    name = "batches"
    verbose_name = "Answer-sheet batches"
    default_auto_field = "django.db.models.BigAutoField"
