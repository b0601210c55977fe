"""URLs of the app, one ``batches`` namespace: the JSON API (its paths are a
contract: docs/server.md), the resumable uploads, and the browser pages.
Login and logout are Django's own views with the project's templates;
login is rate-limited (``login_throttle``).

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
from ..exams import urls as exam_urls
from ..printing import urls as print_urls
from . import api, review_views, tus, views
from .login_throttle import throttled

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
    # Exams (batches/exams/urls.py).
    *exam_urls.urlpatterns,
    # Browser pages.
    path("", RedirectView.as_view(pattern_name="batches:list", permanent=False), name="home"),
    path("accounts/login/", throttled(auth_views.LoginView.as_view(template_name="registration/login.html",
                                                                   next_page=reverse_lazy("batches:list"))),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page=reverse_lazy("batches:login")), name="logout"),
    path("batches/", views.batch_list, name="list"),
    path("batches/upload", views.upload, name="upload"),
    path("batches/<uuid:batch_id>/", views.batch_detail, name="detail"),
    path("batches/<uuid:batch_id>/row", views.batch_row, name="row"),
    path("batches/<uuid:batch_id>/retry", views.batch_retry, name="retry"),
    path("batches/<uuid:batch_id>/progress-stream", views.progress_stream, name="progress-stream"),
    path("batches/<uuid:batch_id>/sheets/<int:index>/overlay.png", views.sheet_overlay, name="sheet-overlay"),
    # The review queue (web/review_views.py): every batch of the user, or one (?batch=<id>).
    path("review/", review_views.queue_start, name="review-queue"),
    path("batches/<uuid:batch_id>/review/", review_views.queue_start, name="batch-review"),
    path("review/next", review_views.queue_move, {"direction": "next"}, name="review-next"),
    path("review/previous", review_views.queue_move, {"direction": "previous"}, name="review-previous"),
    path("review/undo", review_views.undo, name="review-undo"),
    path("review/sheets/<int:sheet_id>/", review_views.review_sheet, name="review-sheet"),
    path("review/sheets/<int:sheet_id>/save", review_views.save_sheet, name="review-save"),
    path("review/sheets/<int:sheet_id>/renew", review_views.renew, name="review-renew"),
    path("review/sheets/<int:sheet_id>/release", review_views.release, name="review-release"),
    path("review/sheets/<int:sheet_id>/picture", review_views.sheet_picture, name="review-picture"),
    *print_urls.urlpatterns,
    *exam_pages.urlpatterns,
    # From the app and project static folders through Django's finders, which
    # refuse paths outside them. "insecure" only means "also without DEBUG".
    path("static/<path:path>", serve_static, {"insecure": True}, name="static"),
]
