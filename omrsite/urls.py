"""Top-level URLs: the admin, and the batches app (its browser pages and API,
one ``batches`` namespace: ``batches/web/urls.py``)."""

from django.contrib import admin
from django.urls import include, path

from batches.web.login_throttle import throttled

urlpatterns = [
    # The admin's own login page, rate-limited like the site's.
    path("admin/login/", throttled(admin.site.login), name="admin-login"),
    path("admin/", admin.site.urls),
    path("", include("batches.web.urls")),
]
