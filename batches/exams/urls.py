"""The exams' API paths, joined to the batches app's (namespace ``batches``)."""

from django.urls import path

from . import api

urlpatterns = [
    path("api/exams", api.exam_collection, name="api-exams"),
    path("api/exams/<int:exam_id>", api.exam_detail, name="api-exam"),
    path("api/exams/<int:exam_id>/evaluation", api.exam_evaluation, name="api-exam-evaluation"),
    path("api/exams/<int:exam_id>/changes", api.exam_changes, name="api-exam-changes"),
    path("api/exams/<int:exam_id>/roster", api.exam_roster, name="api-exam-roster"),
    path("api/exams/<int:exam_id>/results.csv", api.exam_results_csv, name="api-exam-results"),
    path("api/exams/<int:exam_id>/results.xlsx", api.exam_results_workbook, name="api-exam-workbook"),
    path("api/exams/<int:exam_id>/items.json", api.exam_items, name="api-exam-items"),
    path("api/exams/<int:exam_id>/items.csv", api.exam_items_csv, name="api-exam-items-csv"),
    path("api/exams/<int:exam_id>/summary", api.exam_summary, name="api-exam-summary"),
    path("api/exams/<int:exam_id>/report", api.exam_report, name="api-exam-report"),
    path("api/batches/<uuid:batch_id>/scores", api.batch_scores, name="api-batch-scores"),
]
