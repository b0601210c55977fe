"""Templates uploaded in the admin site and used for batches like the built-in
ones: an OMRChecker template.json (read with OMRChecker's answer conventions)
and a template in this project's own format (named by the sheets' QR codes)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from batches import sheet_templates
from batches.models import Answer, SheetTemplate, Stage
from batches.pipeline import stages
from batches.uploads import accept
from batches.web.forms import template_choices

from .conftest import make_zip

pytestmark = pytest.mark.django_db(transaction=True)

ADD = reverse("admin:batches_sheettemplate_add")

OMRCHECKER_TEMPLATE = {
    "pageDimensions": [1000, 1200],
    "bubbleDimensions": [32, 32],
    "fieldBlocks": {
        "MCQ": {"fieldType": "QTYPE_MCQ4", "origin": [120, 400], "fieldLabels": ["q1..10"], "bubblesGap": 56,
                "labelsGap": 56},
        "Roll": {"fieldType": "QTYPE_INT", "origin": [600, 400], "fieldLabels": ["r1..3"], "bubblesGap": 50,
                 "labelsGap": 56},
    },
    "customLabels": {"Roll": ["r1..3"]},
    "preProcessors": [{"name": "CropPage", "options": {}}],
}


def json_file(data: dict, name: str = "template.json") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, json.dumps(data).encode(), content_type="application/json")


def add_template(client, **fields):
    body = {"name": "school-10q", "kind": "omrchecker", "description": "Our 10-question sheet",
            "template_file": json_file(OMRCHECKER_TEMPLATE), **fields}
    return client.post(ADD, body)


def test_staff_upload_an_omrchecker_template_in_the_admin(admin_client, admin_user):
    # When a superuser uploads template.json in the admin
    response = add_template(admin_client)

    # Then it is stored, parsed, and offered for batches
    assert response.status_code == 302, response.content.decode()[:2000]
    row = SheetTemplate.objects.get(name="school-10q")
    assert (row.kind, row.fields_count, row.uploaded_by) == ("omrchecker", 11, admin_user)
    assert sheet_templates.resolve("school-10q").field_names() == ["Roll"] + [f"q{i}" for i in range(1, 11)]
    assert "school-10q" in dict(template_choices())
    assert accept.check_template("school-10q") == "school-10q"
    page = admin_client.get(reverse("admin:batches_sheettemplate_change", args=[row.pk])).content.decode()
    assert "Roll, q1, q2" in page


def test_a_broken_template_is_refused_naming_each_problem_and_nothing_is_stored(admin_client):
    broken = json.loads(json.dumps(OMRCHECKER_TEMPLATE))
    broken["fieldBlocks"]["MCQ"]["fieldType"] = "QTYPE_NOPE"
    broken["preProcessors"] = [{"name": "Sharpen", "options": {}}]
    response = add_template(admin_client, template_file=json_file(broken))
    text = response.content.decode()
    assert response.status_code == 200
    assert "QTYPE_NOPE" in text and "Sharpen" in text
    assert not SheetTemplate.objects.exists()


def test_a_template_file_of_the_other_kind_is_refused_with_the_kind_to_choose(admin_client):
    # An OMRChecker template.json uploaded as this project's format: one
    # sentence naming the kind to choose, not this format's missing keys.
    text = add_template(admin_client, kind="omr-template/1").content.decode()
    assert "an OMRChecker template.json (it has fieldBlocks): choose the kind" in text
    assert "OMRChecker template.json”" in text
    assert "marks: is required" not in text
    native = {"format": "omr-template/1", "page": {}}
    text = add_template(admin_client, template_file=json_file(native)).content.decode()
    assert "in this project&#x27;s format (omr-template/1): choose the kind" in text
    assert not SheetTemplate.objects.exists()


def test_names_of_built_in_templates_and_odd_names_are_refused(admin_client):
    assert "built-in template" in add_template(admin_client, name="a4-100q-5").content.decode()
    assert "lower-case letters" in add_template(admin_client, name="../x").content.decode()
    assert "not JSON" in add_template(admin_client, template_file=SimpleUploadedFile("t.json", b"{nope")).content.decode()
    assert not SheetTemplate.objects.exists()


def test_a_batch_with_an_omrchecker_template_reads_in_omrcheckers_conventions(admin_client, owner):
    # Given the template uploaded in the admin and three photographed/scanned sheets filled in for it
    from batches.omr.omrchecker.render import expected_response, simulate_omrchecker_sheet

    assert add_template(admin_client).status_code == 302
    template = sheet_templates.resolve("school-10q").template
    filled = [{"q1": "A", "q2": "C", "q3": "BD", "r1": "1", "r2": "0", "r3": "7"},
              {"q5": "D", "q10": "A", "r1": "9", "r2": "9", "r3": "0"},
              {}]
    entries, truth = [], []
    for i, answers in enumerate(filled):
        sim = simulate_omrchecker_sheet(template, answers, preset="scan_mild" if i else "photo_mild", seed=i)
        entries.append((f"sheet{i}.jpg", sim.encode_jpeg()))
        truth.append(expected_response(template, answers))

    # When a batch is made with it (has_qr as the form sends by default: OMRChecker sheets have none)
    batch = accept.create_batch(owner, ContentFile(make_zip(entries), name="omrc.zip"), filename="omrc.zip",
                                  template="school-10q", has_qr=True, start=False)
    batch = stages.run_inline(batch.pk)

    # Then every sheet is read with that template, the CSV has its output
    # columns, and the answers are what OMRChecker would write
    assert batch.stage == Stage.COMPLETED, batch.error
    with default_storage.open(batch.results_csv.name, "rb") as f:
        rows = list(csv.DictReader(io.StringIO(f.read().decode("utf-8-sig"))))
    assert len(rows) == 3
    columns = list(rows[0].keys())
    assert columns[columns.index("error") + 1:] == ["Roll"] + [f"q{i}" for i in range(1, 11)]
    for row, expected in zip(rows, truth, strict=True):
        assert row["template"] == "school-10q"
        assert {k: row[k] for k in expected} == expected, row
    # The double mark is data, and flagged for review
    first = Answer.objects.get(sheet__batch=batch, sheet__index=1, field="q3")
    assert first.value == "BD" and "multiple" in first.flags
    assert rows[0]["needs_review"] == "true"
    # The pages were read in file order, and the batch says so (not "by QR code")
    organizing = batch.events.filter(stage=Stage.ORGANIZING_QR).last()
    assert "read as school-10q" in organizing.message and "QR code" not in organizing.message
    # ... and matched to students by the template's Roll grid
    assert "students found by their number grid (Roll)" in organizing.message
    page = admin_client.get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert "pages in file order" in page and "pages identified by QR code" not in page


def test_a_custom_template_in_this_projects_format_is_named_by_the_qr_codes(admin_client, owner):
    # Given a 30-question template of this project's format uploaded in the admin
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template, template_to_dict

    base = template_to_dict(load_template("a4-50q-4"))
    questions = [b for b in base["blocks"] if b["type"] == "questions"]
    base["blocks"] = [b for b in base["blocks"] if b["type"] not in ("questions", "text")] + [
        {**questions[0], "first": 1, "count": min(30, questions[0]["count"])}]
    response = admin_client.post(ADD, {"name": "quiz-30", "kind": "omr-template/1", "description": "Quiz",
                                       "template_file": json_file(base)})
    assert response.status_code == 302, response.content.decode()[:3000]
    custom = sheet_templates.resolve("quiz-30").template
    assert custom.name == "quiz-30"

    # When a sheet printed from it (its QR code says t=quiz-30) is read in a batch made with another template
    import random

    answers = simulate.random_answers(custom, 1, random.Random(5))
    sim = simulate.simulate_sheet(custom, answers, seed=5, preset="clean")
    batch = accept.create_batch(owner, ContentFile(make_zip([("quiz.jpg", sim.encode_jpeg())]), name="q.zip"),
                                  filename="q.zip", template="a4-100q-5", has_qr=True, start=False)
    batch = stages.run_inline(batch.pk)

    # Then the QR code's template was used
    assert batch.stage == Stage.COMPLETED, batch.error
    sheet = batch.sheets.get()
    assert sheet.template == "quiz-30"
    stored = dict(Answer.objects.filter(sheet=sheet).values_list("field", "value"))
    assert {k: v for k, v in stored.items() if k.startswith("q")} == {
        k: v for k, v in sim.truth["answers"].items() if k.startswith("q")}
    # ... and the batch's page names it, the batch's own template only for pages without a QR code
    page = admin_client.get(reverse("batches:detail", args=[batch.pk])).content.decode()
    assert "Template from the QR codes: <code>quiz-30</code> (<code>a4-100q-5</code> for pages without one)" in page


def test_a_batch_says_when_its_template_has_no_student_number_to_match_sheets_by(admin_client):
    from batches.pipeline.stages import _students_by

    no_roll = {k: v for k, v in OMRCHECKER_TEMPLATE.items() if k != "customLabels"}
    no_roll["fieldBlocks"] = {"MCQ": OMRCHECKER_TEMPLATE["fieldBlocks"]["MCQ"]}
    assert add_template(admin_client, name="quiz-10q", template_file=json_file(no_roll)).status_code == 302
    assert _students_by("quiz-10q") == "the template has no student number field: sheets are not matched to students"
    assert add_template(admin_client).status_code == 302
    assert _students_by("school-10q") == "students found by their number grid (Roll)"


def test_a_custom_labels_fields_are_drawn_and_zoomed_as_its_column(admin_client):
    # An OMRChecker custom label (Roll: r1..3) is one answer column, and the
    # column carries the flags: its fields' bubbles are drawn as in doubt
    # (not green, "read as marked") and zoomed in together.
    from batches.review import overlay, zoom

    assert add_template(admin_client).status_code == 302
    rows = [["r1", "1", 0.8, True, 600.0, 400.0], ["r1", "2", 0.0, False, 650.0, 400.0],
            ["r2", "1", 0.0, False, 600.0, 456.0], ["r2", "2", 0.9, True, 650.0, 456.0],
            ["q1", "A", 0.9, True, 120.0, 400.0], ["q1", "B", 0.0, False, 176.0, 400.0]]
    reading = {"template": "school-10q", "page": 1, "image_size": [1000, 1200], "bubbles": rows,
               "flags": {"Roll": ["misaligned"], "q1": []}}
    kinds = [m.kind for m in overlay.bubble_marks(reading)]
    assert kinds == ["doubt-marked", "blank", "blank", "doubt-marked", "marked", "blank"]
    boxes = zoom.field_boxes(reading, ["Roll"])
    assert set(boxes) == {"Roll"}
    assert boxes["Roll"].h > 56  # both rows of the grid


@pytest.mark.parametrize("shrink", [1.0, 0.4])
def test_an_omrchecker_sheets_bubbles_are_drawn_at_their_printed_size(admin_client, shrink):
    # A reviewer's picture circles each bubble at the size it is printed in
    # this image (the template's bubble box, 32 page px, through the page's
    # placement), whatever the scan's resolution.
    import cv2
    import numpy as np

    from batches.omr.omrchecker.render import simulate_omrchecker_sheet
    from batches.review import overlay

    assert add_template(admin_client).status_code == 302
    resolved = sheet_templates.resolve("school-10q")
    sim = simulate_omrchecker_sheet(resolved.template, {"q1": "A"}, preset="scan_mild", seed=3)
    image = cv2.resize(sim.image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    reading = {**resolved.read_image(image).to_dict(), "template": "school-10q"}
    assert reading["error"] is None
    H = np.asarray(reading["homography"])
    px_per_page = float(np.sqrt(abs(np.linalg.det(H[:2, :2] / H[2, 2]))))
    radii = np.array([m.r for m in overlay.bubble_marks(reading)])
    assert len(radii) == len(reading["bubbles"])
    assert np.allclose(radii, 16 * px_per_page, rtol=0.1), (radii.min(), radii.max(), 16 * px_per_page)
