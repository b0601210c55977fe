"""Top-level URLs: the admin, the batches app (API and, later, its pages)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("batches.page_urls")),  # the browser pages and, through them, batches.urls (the API)
]
