"""URLs of the browser pages, in the ``batches`` namespace beside the API's.

Django resolves a namespace to one URLconf only, so this module carries the
API's patterns too (from ``api_urls``) and the site includes this module. Login and logout are Django's own
views with the project's templates.

``/static/`` is served here too (the pages' CSS and vendored htmx, and the
admin's files), so Daphne alone serves a working site on a laptop or a small
install. A proxy in front may serve ``collectstatic``'s folder at the same path
instead; requests then never reach this route.
"""

from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import path, reverse_lazy
from django.views.generic import RedirectView

from ..exams import page_urls as exam_pages
from . import api_urls, views

app_name = "batches"

urlpatterns = api_urls.urlpatterns + [
    path("", RedirectView.as_view(pattern_name="batches:list", permanent=False), name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="registration/login.html",
                                                         next_page=reverse_lazy("batches:list")), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page=reverse_lazy("batches:login")), name="logout"),
    path("batches/", views.batch_list, name="list"),
    path("batches/upload", views.upload, name="upload"),
    path("batches/<uuid:batch_id>/", views.batch_detail, name="detail"),
    path("batches/<uuid:batch_id>/row", views.batch_row, name="row"),
    path("batches/<uuid:batch_id>/progress-stream", views.progress_stream, name="progress-stream"),
    path("batches/<uuid:batch_id>/sheets/<int:index>/overlay.png", views.sheet_overlay, name="sheet-overlay"),
    *exam_pages.urlpatterns,
    # From the app and project static folders through Django's finders, which
    # refuse paths outside them. "insecure" only means "also without DEBUG".
    path("static/<path:path>", serve_static, {"insecure": True}, name="static"),
]
