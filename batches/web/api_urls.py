"""URLs of the batches app (namespace ``batches``). The browser pages join
these under their own names; the API's paths are fixed by DESIGN.md."""

from django.urls import path

from ..exams import urls as exam_urls
from . import api, tus

app_name = "batches"

urlpatterns = [
    path("api/batches/upload", api.upload, name="api-upload"),
    path("api/batches", api.batch_list, name="api-list"),
    path("api/batches/<uuid:batch_id>", api.batch_detail, name="api-detail"),
    path("api/batches/<uuid:batch_id>/stream", api.batch_stream, name="api-stream"),
    path("api/batches/<uuid:batch_id>/results.csv", api.batch_results, name="api-results"),
    path("api/batches/<uuid:batch_id>/retry", api.batch_retry, name="api-retry"),
    path("api/batches/<uuid:batch_id>/delete", api.batch_delete, name="api-delete"),
    path("api/health", api.health, name="api-health"),
    # Resumable uploads (tus 1.0, web/tus.py); with and without the slash.
    path("api/uploads/", tus.upload_collection, name="tus-uploads"),
    path("api/uploads", tus.upload_collection),
    path("api/uploads/<uuid:upload_id>", tus.upload_resource, name="tus-upload"),
    *exam_urls.urlpatterns,
]
