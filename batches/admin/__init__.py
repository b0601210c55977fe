"""The Django admin of the batches app (the review screens live here);
importing this package registers the models."""

from ..exams import admin as exam_admin  # noqa: F401
from . import batch_admin, template_admin  # noqa: F401
