"""URLs of the exams' browser pages (namespace ``batches``, joined in ``batches.web.urls``)."""

from django.urls import path

from . import views

urlpatterns = [
    path("exams/", views.exam_list, name="exams"),
    path("exams/new", views.exam_create, name="exam-new"),
    path("exams/<int:exam_id>/", views.exam_detail, name="exam"),
    path("exams/<int:exam_id>/edit", views.exam_edit, name="exam-edit"),
    path("exams/<int:exam_id>/roster", views.exam_roster, name="exam-roster"),
    path("exams/<int:exam_id>/results", views.exam_results, name="exam-results"),
]
