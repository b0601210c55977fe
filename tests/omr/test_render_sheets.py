"""Print runs: one PDF of many sheets, each page with its own QR code, footer
and printed label, read back by the engine's own reader."""

from __future__ import annotations

import io

import pypdfium2 as pdfium
import pytest

from batches.omr.layout import page_layout
from batches.omr.reader import read_sheet
from batches.omr.render import (
    PrintedSheet,
    render_page_image,
    render_pdf_bytes,
    render_pdf_page_image,
    render_sheets_pdf,
)
from batches.omr.template import load_template

DPI = 150


def _pdf(template, sheets, **kw) -> bytes:
    buf = io.BytesIO()
    render_sheets_pdf(template, sheets, buf, **kw)
    return buf.getvalue()


def _texts(data: bytes) -> list[str]:
    doc = pdfium.PdfDocument(data)
    try:
        return [doc[i].get_textpage().get_text_bounded() for i in range(len(doc))]
    finally:
        doc.close()


def _read(template, data: bytes, index: int):
    page = index % template.pages + 1
    layout = page_layout(template, page, DPI)
    return read_sheet(render_pdf_page_image(data, index, DPI, layout.width, layout.height), template)


def test_every_page_of_every_sheet_carries_its_own_qr_code_and_label():
    # Given three students on a two-page template
    t = load_template("a4-200q-5")
    sheets = [PrintedSheet("41", f"20{i:02d}", f"Student {i} (20{i:02d}, group G{i})") for i in range(3)]
    calls = []

    # When they are printed in one run
    data = _pdf(t, sheets, progress=calls.append)

    # Then each sheet has both pages, in order, with its QR code and its name
    texts = _texts(data)
    assert len(texts) == 6
    assert calls == [1, 2, 3]
    for index in range(6):
        sheet = sheets[index // 2]
        reading = _read(t, data, index)
        assert reading.error is None, reading.error
        assert reading.qr.exam == "41" and reading.qr.student == sheet.student
        assert (reading.qr.page, reading.qr.pages) == (index % 2 + 1, 2)
        assert sheet.label in texts[index]
        assert f"page {index % 2 + 1} of 2" in texts[index]
        for other in sheets:
            if other is not sheet:
                assert other.label not in texts[index]


def test_a_printed_label_leaves_the_reading_alone():
    # A label on the name line changes no answer the reader finds: every field blank, no doubt
    t = load_template("a4-20q-4")
    data = _pdf(t, [PrintedSheet("3", "123", "A Rather Long Name Of Someone (123, group 4C)")])
    reading = _read(t, data, 0)
    assert reading.error is None and not reading.needs_review, (reading.sheet_flags, reading.flags)
    assert all(v == "" for v in reading.answers.values())


def test_blank_sheets_have_the_exam_and_no_student():
    t = load_template("a4-20q-4")
    data = _pdf(t, [PrintedSheet("9")] * 4)
    texts = _texts(data)
    assert len(texts) == 4
    for index in range(4):
        reading = _read(t, data, index)
        assert (reading.qr.exam, reading.qr.student) == ("9", "")
        assert "student" not in texts[index].split("exam 9")[-1]


def test_the_shared_part_of_a_page_is_stored_once():
    # A thousand pages cost a QR code and a few words each, not a whole sheet
    t = load_template("a4-100q-5")
    one = len(_pdf(t, [PrintedSheet("1", "1000", "Somebody (1000)")]))
    many = len(_pdf(t, [PrintedSheet("1", f"{1000 + i}", f"Somebody {i} ({1000 + i})") for i in range(100)]))
    per_page = (many - one) / 99
    assert per_page < one / 3, (one, per_page)


def test_a_long_label_shrinks_then_is_cut_short():
    t = load_template("a4-20q-4")
    short = _texts(render_pdf_bytes(t, label="Ada Lovelace (1815)"))[0]
    assert "Ada Lovelace (1815)" in short
    long_label = "Maria " + "Longname " * 30 + "(123)"
    text = _texts(render_pdf_bytes(t, label=long_label))[0]
    printed = next(line for line in text.splitlines() if line.startswith("Maria"))
    assert printed.endswith("\u2026") and len(printed) < len(long_label)


def test_characters_the_standard_fonts_lack_print_as_question_marks():
    t = load_template("a4-20q-4")
    text = _texts(render_pdf_bytes(t, label="Łukasz 王 Müller"))[0]
    assert "?ukasz ? Müller" in text


def test_a_template_without_a_name_line_gets_the_label_in_the_top_margin():
    # Given a template whose texts have no "Name: ___" line
    t = load_template("a4-20q-4")
    from dataclasses import replace

    plain = replace(t, texts=tuple(tb for tb in t.texts if "Name:" not in tb.text))
    data = _pdf(plain, [PrintedSheet("5", "77", "Grace Hopper (77)")])

    # Then the label is printed all the same, and the page still reads clean
    assert "Grace Hopper (77)" in _texts(data)[0]
    reading = _read(plain, data, 0)
    assert reading.error is None and not reading.needs_review
    assert reading.qr.student == "77"


def test_an_empty_run_is_refused():
    with pytest.raises(ValueError, match="no sheets"):
        render_sheets_pdf(load_template("a4-20q-4"), [], io.BytesIO())


def test_the_raster_of_a_sheet_is_the_raster_of_its_page_in_a_run():
    # The simulator draws on render_page_image; a page of a run must look the same
    t = load_template("a4-20q-4")
    layout = page_layout(t, 1, 100)
    data = _pdf(t, [PrintedSheet("2", "55"), PrintedSheet("2", "56")])
    assert (render_pdf_page_image(data, 1, 100, layout.width, layout.height)
            == render_page_image(t, 1, 100, exam="2", student="56")).all()
