"""The Django admin of the batches app (the review screens live here);
importing this package registers the models."""

from . import batch_admin, template_admin  # noqa: F401
