"""URLs of the print pages (namespace ``batches``, joined in ``batches.web.urls``)."""

from django.urls import path

from . import views

urlpatterns = [
    path("exams/<int:exam_id>/print", views.exam_print, name="exam-print"),
    path("exams/<int:exam_id>/print/<uuid:job_id>", views.print_job_status, name="exam-print-job"),
    path("exams/<int:exam_id>/print/<uuid:job_id>/download", views.print_job_download,
         name="exam-print-download"),
    path("print/blank", views.blank_print, name="print-blank"),
]
