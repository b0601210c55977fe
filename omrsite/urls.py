"""Top-level URLs: the admin, and the batches app (its browser pages and API,
one ``batches`` namespace: ``batches/web/urls.py``)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("batches.web.urls")),
]
