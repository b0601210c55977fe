"""Text from outside checked where it enters (``batches/omr/text.py``): control
characters (a NUL above all, which PostgreSQL refuses in text and JSON) in tus
metadata, multipart file names, QR codes, CSV cells and template labels are
refused with a clear 400 or removed, never a 500 or a lost reading.

Run on PostgreSQL too: DATABASE_URL=postgres://... pytest tests/test_text_input.py
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from batches.csvexport import write_results_csv
from batches.models import Answer, Batch, Sheet, SheetStatus, SheetTemplate, Stage, Upload
from batches.omr import text
from batches.omr.payload import PayloadInvalid, decode_payload
from batches.omr.qr import classify
from batches.pipeline import stages
from batches.uploads import accept

from .conftest import TEMPLATE, make_zip, sheets_zip

pytestmark = pytest.mark.django_db(transaction=True)

TUS = {"Tus-Resumable": "1.0.0"}


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def staff_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_check_names_the_character_and_allows_line_breaks_only_where_asked():
    with pytest.raises(text.TextError, match=r"the file name holds a control character \(U\+0000\)"):
        text.check("scan\x00.zip", "the file name")
    with pytest.raises(text.TextError, match=r"U\+0009"):
        text.check("a\tb", "a name")
    assert text.check("a\tb\r\nc", "a note", multiline=True) == "a\tb\r\nc"
    assert text.strip("S1\x00\x07X\x7f") == "S1X"
    with pytest.raises(text.TextError, match=r"at fieldBlocks\.MCQ\.fieldLabels\[1\]"):
        text.check_json({"fieldBlocks": {"MCQ": {"fieldLabels": ["q1", "q\x002"]}}}, "the template file")


@pytest.mark.parametrize("pairs", [
    [("filename", "scans\x00.zip"), ("template", TEMPLATE)],
    [("filename", "scans.zip"), ("template", TEMPLATE), ("note", "a\x00b")],
    [("filename", "scans.zip"), ("template", TEMPLATE), ("no\x01te", "x")],
])
def test_a_control_character_in_tus_metadata_is_a_clear_400(owner, pairs):
    metadata = ",".join(f"{key} {b64(value)}" for key, value in pairs)
    response = staff_client(owner).generic(
        "POST", reverse("batches:tus-uploads"), b"",
        headers={**TUS, "Upload-Length": "100", "Upload-Metadata": metadata})
    assert response.status_code == 400, response.content
    assert "control character" in response.json()["error"]
    assert not Upload.objects.exists() and not Batch.objects.exists()


def test_a_control_character_in_an_uploaded_file_name_is_removed_or_refused(owner, api):
    data, _sheets = sheets_zip(1)
    # Multipart: Django's parser drops characters that are not printable from the name
    body = (f'--BB\r\nContent-Disposition: form-data; name="template"\r\n\r\n{TEMPLATE}\r\n'
            '--BB\r\nContent-Disposition: form-data; name="file"; filename="sc\x00an\x07s.zip"\r\n'
            'Content-Type: application/zip\r\n\r\n').encode() + data + b"\r\n--BB--\r\n"
    response = api.generic("POST", reverse("batches:api-upload"), body,
                           content_type="multipart/form-data; boundary=BB")
    assert response.status_code == 202
    assert Batch.objects.get().original_filename == "scans.zip"
    # Any other way in (the command line, a service call) is refused with the reason
    with pytest.raises(accept.ServiceError) as info:
        accept.create_batch(owner, ContentFile(data), filename="scans\x00.zip", template=TEMPLATE, start=False)
    assert info.value.status == 400 and "control character (U+0000)" in info.value.message
    assert Batch.objects.count() == 1


def test_a_nul_in_a_qr_student_id_flags_that_page_and_keeps_its_reading(owner):
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(TEMPLATE)
    answers = simulate.random_answers(t, 1, random.Random(5))
    bad = simulate.simulate_sheet(t, answers, seed=5, preset="clean", exam="EXAM1", student="S1\x00X")
    good = simulate.simulate_sheet(t, answers, seed=6, preset="clean", exam="EXAM1", student="S2")
    data = make_zip([("bad.jpg", bad.encode_jpeg()), ("good.jpg", good.encode_jpeg())])
    batch = accept.create_batch(owner, ContentFile(data, name="s.zip"), filename="s.zip", template=TEMPLATE,
                                start=False)
    batch = stages.run_inline(batch.pk)
    assert batch.stage == Stage.COMPLETED, batch.error

    sheet = Sheet.objects.get(batch=batch, source_name="bad.jpg")
    assert sheet.status == SheetStatus.DONE and sheet.attempts <= 1
    assert "qr_invalid" in sheet.flags and sheet.needs_review
    assert "student id holds a control character (U+0000)" in sheet.qr_error
    assert "\x00" not in sheet.qr_payload and "\x00" not in sheet.student
    # The reading is kept: every answer is there
    stored = dict(Answer.objects.filter(sheet=sheet).values_list("field", "value"))
    assert all(stored[q] == v for q, v in answers.items() if q.startswith("q"))
    assert Sheet.objects.get(batch=batch, source_name="good.jpg").student == "S2"


def test_a_qr_code_with_a_control_character_is_invalid_not_foreign():
    with pytest.raises(PayloadInvalid, match="exam id") as info:
        decode_payload("OMR1;t=a4-20q-4;p=2;n=2;e=E%07;s=S1")
    assert info.value.payload.to_dict() == {"template": "a4-20q-4", "page": 2, "pages": 2, "exam": "",
                                            "student": "S1"}
    with pytest.raises(PayloadInvalid, match="template name") as info:
        decode_payload("OMR1;t=a4%00;p=1")
    assert info.value.payload is None
    result = classify(["OMR1;t=a4-20q-4;p=1;s=\x00raw"])
    assert result.status == "qr_invalid" and "\x00" not in result.text
    assert classify(["foreign\x00code"]).text == "foreigncode"


def test_csv_cells_lose_control_characters(owner):
    batch = Batch.objects.create(owner=owner, template=TEMPLATE, stage=Stage.COMPLETED)
    sheet = Sheet.objects.create(batch=batch, index=1, source_name="a.jpg", image="x", status=SheetStatus.DONE,
                                 error="line one\nline\x0btwo")
    Answer.objects.create(sheet=sheet, field="q1", value="A\x1b[31m")
    out = io.StringIO()
    write_results_csv(batch, out)
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    cells = dict(zip(header, row, strict=True))
    assert cells["q1"] == "A[31m" and cells["error"] == "line one\nlinetwo"


def test_a_control_character_in_a_template_label_is_refused_by_name(admin_client):
    from .test_sheet_templates import OMRCHECKER_TEMPLATE

    template = json.loads(json.dumps(OMRCHECKER_TEMPLATE))
    template["customLabels"] = {"Ro\u0000ll": ["r1..3"]}
    response = admin_client.post(reverse("admin:batches_sheettemplate_add"),
                                 {"name": "school-10q", "kind": "omrchecker", "description": "",
                                  "template_file": SimpleUploadedFile("t.json", json.dumps(template).encode())})
    assert response.status_code == 200
    page = response.content.decode()
    assert "the template file at customLabels: the key" in page and "control character (U+0000)" in page
    assert not SheetTemplate.objects.exists()
