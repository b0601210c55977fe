"""Helpers of the exam tests: exams made through the services, and batches of
sheets stored the way the pipeline stores them (an engine reading turned into
rows by ``reading.result_from_reading``), without reading images."""

from __future__ import annotations

from batches.exams import scores, services
from batches.models import Answer, Batch, Sheet, SheetStatus, Stage
from batches.pipeline.reading import result_from_reading

TEMPLATE = "a4-20q-4"
TWO_PAGES = "a4-200q-5"
KEY_A = dict(zip([f"q{i}" for i in range(1, 21)], "ABCDABCDABCDABCDABCD", strict=True))
KEY_B = dict(zip([f"q{i}" for i in range(1, 21)], "DCBADCBADCBADCBADCBA", strict=True))


def make_exam(owner, template: str = TEMPLATE, name: str = "Physics 1", **rules):
    data = {"name": name, "template": template, "keys": {"A": KEY_A, "B": KEY_B}, **rules}
    return services.create_exam(owner, data)


def reading(answers: dict, *, template: str = TEMPLATE, page: int = 1, pages: int = 1, qr_exam: str = "",
            qr_student: str = "", qr: bool = True) -> dict:
    """An engine reading (``SheetReading.to_dict()``'s fields the server uses)."""
    return {
        "template": template, "page": page, "error": "", "needs_review": False, "sheet_flags": [],
        "qr": {"template": template, "page": page, "pages": pages, "exam": qr_exam, "student": qr_student} if qr
        else None,
        "answers": dict(answers), "flags": {}, "confidence": {},
    }


def add_batch(owner, exam, readings: list[dict], *, template: str | None = None, names: list[str] | None = None,
              score: bool = True) -> Batch:
    """A completed batch of ``exam`` holding these readings as sheets (failed
    when a reading is None), scored when ``score``."""
    batch = Batch.objects.create(owner=owner, template=template or (exam.template if exam else TEMPLATE), exam=exam,
                                 stage=Stage.COMPLETED, original_filename="scans.zip")
    for i, r in enumerate(readings, 1):
        name = names[i - 1] if names else f"scan_{i:03d}.jpg"
        sheet = Sheet.objects.create(batch=batch, index=i, source_name=name, image=f"pages/{i:05d}.jpg")
        if r is None:
            Sheet.objects.filter(pk=sheet.pk).update(status=SheetStatus.FAILED, error="no page found",
                                                     needs_review=True)
            continue
        result = result_from_reading(sheet.pk, r, batch)
        Sheet.objects.filter(pk=sheet.pk).update(status=result.status, **result.fields)
        Answer.objects.bulk_create(result.answers)
    if score:
        scores.score_batch(batch)
    return batch


def answers(key: dict, version: str = "A", student: str = "", wrong: tuple = (), blank: tuple = (),
            multiple: dict | None = None) -> dict:
    """A sheet's answers: the key, with some questions wrong, blank or multiple."""
    out = {"student_number": student, "exam_version": version}
    for q, right in key.items():
        if q in blank:
            out[q] = ""
        elif q in wrong:
            out[q] = "ABCD"[("ABCD".index(right) + 1) % 4]
        else:
            out[q] = right
    out.update(multiple or {})
    return out
