"""The printed sheet: PDF pages and size, and the raster agreeing with the layout."""

from __future__ import annotations

import io
import math

import numpy as np
import pypdfium2 as pdfium
import pytest
from pyzbar import pyzbar

from batches.omr.layout import MM_PER_INCH, page_layout
from batches.omr.payload import decode_payload
from batches.omr.render import page_payload, render_page_image, render_pdf
from batches.omr.template import load_template

PT_PER_MM = 72 / MM_PER_INCH


def _pdf_pages(template, **kw) -> list[tuple[float, float]]:
    buf = io.BytesIO()
    render_pdf(template, buf, **kw)
    doc = pdfium.PdfDocument(buf.getvalue())
    try:
        return [doc[i].get_size() for i in range(len(doc))]
    finally:
        doc.close()


@pytest.mark.parametrize("name", ["a4-100q-5", "letter-20q-4", "a4-200q-5", "letter-200q-4"])
def test_pdf_has_every_page_at_the_exact_size(name):
    t = load_template(name)
    sizes = _pdf_pages(t)
    assert len(sizes) == t.pages
    for w, h in sizes:
        assert w == pytest.approx(t.page_width * PT_PER_MM, abs=0.01)
        assert h == pytest.approx(t.page_height * PT_PER_MM, abs=0.01)


def test_pdf_to_a_path(tmp_path):
    t = load_template("a4-20q-4")
    out = tmp_path / "sheet.pdf"
    render_pdf(t, out, exam="E1")
    assert out.read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("dpi", [100, 150, 300])
@pytest.mark.parametrize("name", ["a4-100q-5", "letter-20q-4"])
def test_raster_size_is_the_layout_size(name, dpi):
    t = load_template(name)
    image = render_page_image(t, 1, dpi)
    layout = page_layout(t, 1, dpi)
    assert image.dtype == np.uint8 and image.ndim == 2
    assert image.shape == (layout.height, layout.width)


def test_raster_is_a_fresh_copy():
    t = load_template("a4-20q-4")
    first = render_page_image(t, 1, 100)
    first[:] = 0
    again = render_page_image(t, 1, 100)
    assert again.mean() > 200


def test_unknown_page_is_refused():
    t = load_template("a4-20q-4")
    with pytest.raises(ValueError):
        render_page_image(t, 2, 100)
    with pytest.raises(ValueError):
        page_payload(t, 2)


@pytest.mark.parametrize("dpi", [100, 300])
@pytest.mark.parametrize("name,page", [("a4-100q-5", 1), ("letter-50q-4", 1), ("a4-200q-5", 2)])
def test_marks_are_dark_where_the_layout_says_with_white_around(name, page, dpi):
    t = load_template(name)
    image = render_page_image(t, page, dpi)
    layout = page_layout(t, page, dpi)
    h, w = image.shape
    for m in layout.marks:
        cx, cy = int(m.x), int(m.y)
        assert image[cy - 3:cy + 4, cx - 3:cx + 4].max() < 60
        # Edges within a pixel of the layout's: sample just inside and just outside.
        half = m.size / 2
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            inside = (int(m.x + sx * (half - 1.5)), int(m.y + sy * (half - 1.5)))
            outside = (int(m.x + sx * (half + 1.5)), int(m.y + sy * (half + 1.5)))
            assert image[inside[1], inside[0]] < 60
            assert image[outside[1], outside[0]] > 200
            far = (int(m.x + sx * m.size), int(m.y + sy * m.size))
            if 0 <= far[0] < w and 0 <= far[1] < h:
                assert image[far[1], far[0]] == 255
        # A white band all round the mark, from just past its anti-aliased edge
        # to 2.5 mm out (template text may come closer than that diagonally).
        reach = half + 2.5 * dpi / MM_PER_INCH
        oy, ox = max(0, int(cy - reach)), max(0, int(cx - reach))
        band = image[oy:int(cy + reach), ox:int(cx + reach)]
        ys, xs = np.mgrid[0:band.shape[0], 0:band.shape[1]]
        px, py = xs + ox + 0.5, ys + oy + 0.5
        ring = ~((np.abs(px - m.x) < half + 2) & (np.abs(py - m.y) < half + 2))
        # The key bar beside the top-left mark is printed on purpose.
        k = layout.key
        ring &= ~((px >= k.x - 2) & (px < k.x + k.w + 2) & (py >= k.y - 2) & (py < k.y + k.h + 2))
        assert band[ring].min() > 230


def test_key_bar_is_solid():
    t = load_template("a4-100q-5")
    layout = page_layout(t, 1, 150)
    image = render_page_image(t, 1, 150)
    k = layout.key
    assert image[int(k.y + 2):int(k.y + k.h - 2), int(k.x + 2):int(k.x + k.w - 2)].max() < 60


def _ring_min(image, b, radius):
    """Darkest value near the circle of ``radius`` px around bubble ``b``, per angle."""
    values = []
    for a in np.linspace(0, 2 * math.pi, 24, endpoint=False):
        x, y = b.x + radius * math.cos(a), b.y + radius * math.sin(a)
        i, j = int(x), int(y)
        values.append(int(image[j - 1:j + 2, i - 1:i + 2].min()))
    return values


@pytest.mark.parametrize("dpi", [150, 300])
@pytest.mark.parametrize("name,page", [("a4-100q-5", 1), ("letter-20q-4", 1), ("a4-200q-5", 2)])
def test_bubbles_have_white_interiors_and_dark_outlines_at_the_layout_radius(name, page, dpi):
    t = load_template(name)
    image = render_page_image(t, page, dpi)
    layout = page_layout(t, page, dpi)
    bubbles = layout.bubbles
    sample = bubbles[:: max(1, len(bubbles) // 60)] + [bubbles[-1]]
    line = 0.25 * dpi / MM_PER_INCH
    for b in sample:
        ys, xs = np.mgrid[int(b.y - b.r):int(b.y + b.r) + 1, int(b.x - b.r):int(b.x + b.r) + 1]
        d = np.hypot(xs + 0.5 - b.x, ys + 0.5 - b.y)
        interior = image[ys, xs][d < b.r - line - 1.5]
        assert interior.size > 0 and interior.min() > 240, (b.field, b.value)
        assert max(_ring_min(image, b, b.r)) < 128, (b.field, b.value)


@pytest.mark.parametrize(
    "name,page,exam,student",
    [
        ("a4-100q-5", 1, "", ""),
        ("a4-100q-5", 1, "MATH;101 ü", "00123"),
        ("letter-20q-4", 1, "Final exam = 2024/25 & more", "s-9;x=1"),
        ("a4-200q-5", 2, "MATH;101 ü", "00123"),
    ],
)
def test_qr_decodes_to_the_page_payload(name, page, exam, student):
    t = load_template(name)
    image = render_page_image(t, page, 150, exam=exam, student=student)
    q = page_layout(t, page, 150).qr
    crop = image[int(q.y):int(q.y + q.h) + 1, int(q.x):int(q.x + q.w) + 1]
    found = pyzbar.decode(crop, symbols=[pyzbar.ZBarSymbol.QRCODE])
    assert len(found) == 1
    text = found[0].data.decode("utf-8")
    expected = page_payload(t, page, exam, student)
    assert text == expected.encode()
    assert decode_payload(text) == expected
    assert expected.pages == t.pages and expected.page == page


def test_page_two_carries_its_page_number():
    t = load_template("letter-200q-5")
    assert t.pages == 2
    image = render_page_image(t, 2, 150)
    q = page_layout(t, 2, 150).qr
    found = pyzbar.decode(image[int(q.y):int(q.y + q.h) + 1, int(q.x):int(q.x + q.w) + 1])
    payload = decode_payload(found[0].data.decode())
    assert (payload.template, payload.page, payload.pages) == ("letter-200q-5", 2, 2)


def test_qr_is_pure_black_and_white_with_its_quiet_zone_inside_the_box():
    t = load_template("a4-100q-5")
    image = render_page_image(t, 1, 300, exam="E")
    q = page_layout(t, 1, 300).qr
    crop = image[int(q.y) + 1:int(q.y + q.h) - 1, int(q.x) + 1:int(q.x + q.w) - 1]
    # Module edges fall between pixels, so only a thin anti-aliased fringe is grey.
    grey = ((crop > 40) & (crop < 215)).mean()
    assert grey < 0.08
    assert crop.min() == 0
    edge = 4  # px: well inside the four-module quiet zone
    assert crop[:edge].min() == 255 and crop[-edge:].min() == 255
    assert crop[:, :edge].min() == 255 and crop[:, -edge:].min() == 255


def test_printed_sheet_differs_only_in_the_qr_between_students():
    t = load_template("a4-50q-4")
    layout = page_layout(t, 1, 100)
    a = render_page_image(t, 1, 100, student="1").astype(int)
    b = render_page_image(t, 1, 100, student="2").astype(int)
    diff = np.argwhere(a != b)
    assert diff.size
    q = layout.qr
    # The footer names the student too; everything else is identical.
    footer_top = max(m.y for m in layout.marks) - layout.marks[0].size
    in_qr = (diff[:, 1] >= q.x) & (diff[:, 1] < q.x + q.w) & (diff[:, 0] >= q.y) & (diff[:, 0] < q.y + q.h)
    in_footer = diff[:, 0] >= footer_top
    assert (in_qr | in_footer).all()
