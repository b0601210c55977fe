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

from . import api_urls, review_views, views

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
    # From the app and project static folders through Django's finders, which
    # refuse paths outside them. "insecure" only means "also without DEBUG".
    path("static/<path:path>", serve_static, {"insecure": True}, name="static"),
]
