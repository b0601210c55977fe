from django.apps import AppConfig
from django.contrib.auth.signals import user_login_failed
from django.db.models.signals import post_migrate


class BatchesConfig(AppConfig):
    """Batches of scanned answer sheets: upload, pipeline, progress, results."""

    name = "batches"
    verbose_name = "Answer-sheet batches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .roles import on_post_migrate

        # After this app's permissions exist (auth creates them on post_migrate too).
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="batches-reviewers-group")

        from .web.login_throttle import on_login_failed

        user_login_failed.connect(on_login_failed, dispatch_uid="batches-login-throttle")
