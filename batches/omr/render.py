"""The printed answer sheet: a vector PDF of every template page, and the raster of
that same PDF, so the image a test or the simulator starts from is exactly what
comes out of the printer.

All geometry comes from the template (millimetres from the top-left corner of the
page) and from ``layout.page_layout``; nothing here decides where a readable
element goes, it only draws it. Bubbles are drawn as a circle outline whose line
is centred on the layout radius, with a white interior and nothing printed inside,
because the reader measures the darkness of that interior.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import segno
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from .layout import MM_PER_INCH, page_layout
from .payload import QrPayload
from .template import Box, ChoiceBlock, DigitBlock, QuestionBlock, Template, TextBlock

PT_PER_MM = 72.0 / MM_PER_INCH

BUBBLE_LINE_MM = 0.25
BUBBLE_GREY = 0.2  # outline darkness (0 black, 1 white): clearly printed, lighter than a pencil fill
LABEL_GREY = 0.1
QR_BORDER = 4  # modules of quiet zone, drawn inside the template's QR box
QR_ERROR = "m"  # segno raises it further when that does not cost a larger symbol
MARK_CLEARANCE_MM = 3.0  # white kept around marks and the key bar; generated labels never enter it
CAP_HEIGHT = 0.718  # Helvetica cap height, in em

FONT = "Helvetica"
FONT_BOLD = "Helvetica-Bold"
LABEL_MIN_PT = 6.0  # a long printed name shrinks to this size, then is cut short
NAME_LINE = "Name:"  # a template text with this and a run of underscores is where a printed name goes

# pdfium keeps global state and is documented as not thread-safe; the server may
# render from several worker threads.
_PDFIUM_LOCK = threading.Lock()


def page_payload(template: Template, page: int = 1, exam: str = "", student: str = "") -> QrPayload:
    """The QR payload printed on ``page`` (1-based) of ``template``.

    ``exam`` and ``student`` are free text (any characters; the payload
    percent-encodes them). Returns a ``QrPayload`` whose ``pages`` is the
    template's page count. Raises ``ValueError`` for a page the template lacks.
    """
    if not 1 <= page <= template.pages:
        raise ValueError(f"template {template.name!r} has {template.pages} page(s), not page {page}")
    return QrPayload(template.name, page, template.pages, exam, student)


@dataclass(frozen=True)
class PrintedSheet:
    """One copy of the sheet in a print run: the ``exam`` and ``student`` ids
    its QR codes carry (free text, either may be empty) and the ``label``
    printed on every page of it (a student's name and number; empty for a
    blank sheet)."""

    exam: str = ""
    student: str = ""
    label: str = ""


def render_pdf(template: Template, out: str | os.PathLike | BinaryIO, *, exam: str = "", student: str = "",
               label: str = "") -> None:
    """Write the printable sheet: a vector PDF with every page of ``template``.

    ``out`` is a file path or a binary file object (written from its current
    position, left open). Each page is exactly ``template.page_width`` x
    ``page_height`` mm. ``exam`` and ``student`` (free text) go into each page's
    QR code, and into the small footer line when the PDF's standard fonts can
    print them (Windows-1252 characters). ``label`` (free text, e.g. a
    student's name and number) is printed on the page's name line, see
    ``render_sheets_pdf``. Returns nothing.
    """
    data = _pdf_bytes(template, exam, student, label)
    if isinstance(out, (str, os.PathLike)):
        Path(out).write_bytes(data)
    else:
        out.write(data)


def render_pdf_bytes(template: Template, *, exam: str = "", student: str = "", label: str = "") -> bytes:
    """The PDF ``render_pdf`` writes, as bytes (same parameters, without ``out``)."""
    return _pdf_bytes(template, exam, student, label)


def render_sheets_pdf(template: Template, sheets: Iterable[PrintedSheet], out: BinaryIO, *,
                      progress: Callable[[int], None] | None = None, title: str = "") -> int:
    """Write one PDF holding every page of ``template`` once per sheet of
    ``sheets``, in order (a class's roster, a pile of blank sheets).

    Each page carries its sheet's QR code (exam, student, page n of N) and
    footer as ``render_pdf`` prints them, and the sheet's ``label`` in bold on
    the template's name line (a text block with ``Name:`` and underscores),
    or, on a page without one, centred in the top margin between the corner
    marks; a label too long for its room is printed smaller (down to
    ``LABEL_MIN_PT``), then cut short with an ellipsis. Characters outside
    Windows-1252 (the standard PDF fonts) print as ``?``.

    What every copy of a page shares (marks, texts, grids, bubbles) is drawn
    once as a form XObject that each page reuses, so a run of thousands of
    pages costs one QR code and a few words per page, in time and in bytes.
    ``out`` is a binary file object (written from its current position, left
    open). ``progress`` is called with the number of sheets written after
    each sheet. Returns the number of pages written; raises ``ValueError``
    when ``sheets`` is empty.
    """
    canvas = Canvas(out, pagesize=(template.page_width * PT_PER_MM, template.page_height * PT_PER_MM),
                    pageCompression=1, invariant=1)
    canvas.setTitle(title or template.title)
    canvas.setSubject(f"Answer sheet ({template.name})")
    canvas.setCreator("omr-server")
    forms: dict[int, str] = {}
    pages = done = 0
    for sheet in sheets:
        for page in range(1, template.pages + 1):
            drawer = _Page(canvas, template, page, page_payload(template, page, sheet.exam, sheet.student))
            if page not in forms:
                forms[page] = f"static_page_{page}"
                canvas.beginForm(forms[page])
                drawer.draw_static()
                canvas.endForm()
            canvas.doForm(forms[page])
            drawer.draw_variable(sheet.label)
            canvas.showPage()
            pages += 1
        done += 1
        if progress is not None:
            progress(done)
    if not pages:
        raise ValueError("no sheets to print")
    canvas.save()
    return pages


def render_pdf_page_image(data: bytes, index: int, dpi: float, width: int, height: int) -> np.ndarray:
    """Rasterise page ``index`` (0-based) of the PDF ``data`` at ``dpi`` into a
    grey ``uint8`` array of ``height`` x ``width`` pixels, at the exact scale the
    layout assumes (1 mm = dpi / 25.4 px from the top-left corner)."""
    scale = dpi / 72.0
    with _PDFIUM_LOCK:
        doc = pdfium.PdfDocument(data)
        try:
            pdf_page = doc[index]
            bitmap = pdfium.PdfBitmap.new_native(width, height, pdfium_c.FPDFBitmap_Gray)
            bitmap.fill_rect(0, 0, width, height, (255, 255, 255, 255))
            # Page.render sizes the bitmap with ceil() and stretches the page to
            # fit it, which moves far corners by a pixel or more. A scale matrix
            # keeps 1 mm = dpi/25.4 px exactly, as the layout assumes, but pdfium
            # applies it on top of a display matrix that squeezes the page into
            # its whole-point size (595.28 x 841.89 pt becomes 595 x 841), so
            # that squeeze is undone here.
            w_pt, h_pt = pdf_page.get_size()
            sx = scale * w_pt / max(1, int(w_pt))
            sy = scale * h_pt / max(1, int(h_pt))
            matrix = pdfium_c.FS_MATRIX(sx, 0.0, 0.0, sy, 0.0, 0.0)
            clip = pdfium_c.FS_RECTF(0.0, 0.0, float(width), float(height))
            pdfium_c.FPDF_RenderPageBitmapWithMatrix(bitmap, pdf_page, matrix, clip, pdfium_c.FPDF_ANNOT)
            image = np.array(bitmap.to_numpy(), dtype=np.uint8, copy=True).reshape(height, width)
            pdf_page.close()
        finally:
            doc.close()
    return image


def render_page_image(template: Template, page: int = 1, dpi: float = 300, *, exam: str = "",
                      student: str = "") -> np.ndarray:
    """Rasterise page ``page`` (1-based) of the PDF ``render_pdf`` writes.

    ``dpi`` is dots per inch. Returns a grey ``uint8`` array of shape
    ``(page_layout(template, page, dpi).height, .width)``, white 255, with pixel
    ``(i, j)`` covering ``[i, i+1) x [j, j+1)`` in layout pixels, so every mark,
    bubble and the QR box sit exactly where ``page_layout`` puts them. Blank
    pages are cached; the array returned is a fresh copy the caller may draw on.
    """
    layout = page_layout(template, page, dpi)  # validates the page number
    return _page_raster(template, page, float(dpi), exam, student, layout.width, layout.height).copy()


# ---------------------------------------------------------------- raster


@lru_cache(maxsize=12)
def _page_raster(template: Template, page: int, dpi: float, exam: str, student: str,
                 width: int, height: int) -> np.ndarray:
    image = render_pdf_page_image(_pdf_bytes(template, exam, student, ""), page - 1, dpi, width, height)
    image.setflags(write=False)
    return image


# ---------------------------------------------------------------- PDF


@lru_cache(maxsize=32)
def _pdf_bytes(template: Template, exam: str, student: str, label: str) -> bytes:
    buf = io.BytesIO()
    render_sheets_pdf(template, [PrintedSheet(exam, student, label)], buf)
    return buf.getvalue()


def _cap_mm(size_pt: float) -> float:
    return size_pt * CAP_HEIGHT / PT_PER_MM


def _width_mm(text: str, font: str, size_pt: float) -> float:
    return stringWidth(text, font, size_pt) / PT_PER_MM


class _Page:
    """Draws one page; takes template millimetres from the top-left and turns
    them into reportlab points from the bottom-left."""

    def __init__(self, canvas: Canvas, template: Template, page: int, payload: QrPayload):
        self.c = canvas
        self.t = template
        self.page = page
        self.payload = payload
        self.r = template.bubble_diameter / 2
        # Label sizes follow the bubble size so larger-bubble templates stay in proportion.
        self.label_pt = max(5.0, min(9.0, template.bubble_diameter * 1.7))
        m = MARK_CLEARANCE_MM
        self.keep_out = [Box(k.x - k.size / 2 - m, k.y - k.size / 2 - m, k.size + 2 * m, k.size + 2 * m)
                         for k in template.marks]
        key = template.key
        if key.w and key.h:
            self.keep_out.append(Box(key.x - m, key.y - m, key.w + 2 * m, key.h + 2 * m))
        qr = template.qr
        self.keep_out.append(Box(qr.x - 1.0, qr.y - 1.0, qr.w + 2.0, qr.h + 2.0))

    # -- coordinate helpers (mm in, points out)

    def X(self, x_mm: float) -> float:
        return x_mm * PT_PER_MM

    def Y(self, y_mm: float) -> float:
        return (self.t.page_height - y_mm) * PT_PER_MM

    def rect(self, x: float, y: float, w: float, h: float, *, fill: bool, stroke: bool) -> None:
        """Rectangle by its top-left corner, in mm."""
        self.c.rect(self.X(x), self.Y(y + h), w * PT_PER_MM, h * PT_PER_MM, fill=int(fill), stroke=int(stroke))

    def clear(self, x: float, y: float, w: float, h: float) -> bool:
        """Whether a generated label's box stays out of the marks' and QR's surroundings."""
        return not any(x < b.x + b.w and b.x < x + w and y < b.y + b.h and b.y < y + h for b in self.keep_out)

    def text(self, x: float, y_baseline: float, text: str, size: float, *, bold: bool = False,
             align: str = "left", grey: float = LABEL_GREY, guard: bool = True) -> None:
        """Text at a baseline in mm; ``align`` is left, centre or right of ``x``.

        With ``guard``, text that would reach into a mark's or the QR's
        surroundings is left out rather than risk the reader finding it there.
        """
        font = FONT_BOLD if bold else FONT
        w = _width_mm(text, font, size)
        left = x - w / 2 if align == "centre" else x - w if align == "right" else x
        if guard and not self.clear(left, y_baseline - _cap_mm(size), w, _cap_mm(size) * 1.3):
            return
        self.c.setFillGray(grey)
        self.c.setFont(font, size)
        if align == "centre":
            self.c.drawCentredString(self.X(x), self.Y(y_baseline), text)
        elif align == "right":
            self.c.drawRightString(self.X(x), self.Y(y_baseline), text)
        else:
            self.c.drawString(self.X(x), self.Y(y_baseline), text)

    def text_mid(self, x: float, y_mid: float, text: str, size: float, **kw) -> None:
        """Text vertically centred (capitals) on ``y_mid`` mm."""
        self.text(x, y_mid + _cap_mm(size) / 2, text, size, **kw)

    # -- page

    def draw(self, label: str = "") -> None:
        self.draw_static()
        self.draw_variable(label)

    def draw_static(self) -> None:
        """What every copy of this page shares."""
        self.draw_texts()
        for block in self.t.digit_grids:
            if block.page == self.page:
                self.draw_digits(block)
        for block in self.t.choices:
            if block.page == self.page:
                self.draw_choice(block)
        for block in self.t.questions:
            if block.page == self.page:
                self.draw_questions(block)
        self.draw_bubbles()
        self.draw_marks()

    def draw_variable(self, label: str) -> None:
        """What belongs to one copy: its printed label, footer and QR code."""
        if label:
            self.draw_label(label)
        self.draw_footer()
        self.draw_qr()

    def draw_marks(self) -> None:
        c = self.c
        c.setFillGray(0.0)
        for m in self.t.marks:
            self.rect(m.x - m.size / 2, m.y - m.size / 2, m.size, m.size, fill=True, stroke=False)
        k = self.t.key
        if k.w and k.h:
            self.rect(k.x, k.y, k.w, k.h, fill=True, stroke=False)

    def draw_qr(self) -> None:
        box = self.t.qr
        if not (box.w and box.h):
            return
        matrix = _qr_matrix(self.payload.encode())
        n = len(matrix)
        module = min(box.w, box.h) / (n + 2 * QR_BORDER)
        x0 = box.x + (box.w - n * module) / 2
        y0 = box.y + (box.h - n * module) / 2
        c = self.c
        c.setFillGray(1.0)
        self.rect(box.x, box.y, box.w, box.h, fill=True, stroke=False)
        # One path of horizontal runs: adjacent modules merge into a single fill,
        # so the raster shows no anti-aliased seams between them.
        path = c.beginPath()
        for j, row in enumerate(matrix):
            i = 0
            while i < n:
                if not row[i]:
                    i += 1
                    continue
                start = i
                while i < n and row[i]:
                    i += 1
                x, y = x0 + start * module, y0 + j * module
                path.rect(self.X(x), self.Y(y + module), (i - start) * module * PT_PER_MM, module * PT_PER_MM)
        c.setFillGray(0.0)
        c.drawPath(path, stroke=0, fill=1)

    def draw_bubbles(self) -> None:
        c = self.c
        c.setLineWidth(BUBBLE_LINE_MM * PT_PER_MM)
        c.setStrokeGray(BUBBLE_GREY)
        c.setFillGray(1.0)
        r = self.r * PT_PER_MM
        # Layout pixels are mm * dpi / 25.4 from the top-left, the same as these
        # points scaled, so drawing at the template mm lands on the layout centres.
        for g in page_layout(self.t, self.page, MM_PER_INCH).groups:
            for b in g.bubbles:
                c.circle(self.X(b.x), self.Y(b.y), r, stroke=1, fill=1)

    def draw_texts(self) -> None:
        for tb in self.t.texts:
            if tb.page == self.page:
                # Template text is placed by the template's author: printed as given.
                self.text(tb.x, tb.y, tb.text, tb.size, bold=tb.bold, grey=0.0, guard=False)

    def draw_questions(self, block: QuestionBlock) -> None:
        size = self.label_pt
        gap = 1.0
        columns = -(-block.count // block.rows)
        for col in range(columns):
            cx = block.x + col * block.column_pitch
            for j, opt in enumerate(block.options):
                self.text(cx + j * block.option_pitch, block.y - self.r - gap, opt, size, bold=True, align="centre")
            for row in range(block.rows):
                i = col * block.rows + row
                if i >= block.count:
                    break
                y = block.y + row * block.row_pitch
                self.text_mid(cx - self.r - 1.6, y, str(block.first + i), size + 0.5, bold=True, align="right")

    def draw_digits(self, block: DigitBlock) -> None:
        size = self.label_pt - 0.5
        r = self.r
        x_first = block.x
        for j, v in enumerate(block.values):
            self.text_mid(x_first - r - 1.0, block.y + j * block.row_pitch, v, size, align="right")
        top = block.y - r - 1.2
        if block.write_in_boxes:
            box_h = max(4.5, min(6.5, block.column_pitch * 1.1))
            left = x_first - block.column_pitch / 2
            width = block.digits * block.column_pitch
            self.c.setLineWidth(0.3 * PT_PER_MM)
            self.c.setStrokeGray(0.35)
            self.rect(left, top - box_h, width, box_h, fill=False, stroke=True)
            self.c.setLineWidth(0.2 * PT_PER_MM)
            for k in range(1, block.digits):
                x = left + k * block.column_pitch
                self.c.line(self.X(x), self.Y(top - box_h), self.X(x), self.Y(top))
            top -= box_h
        self.text(x_first - block.column_pitch / 2, top - 1.3, block.label, self.label_pt + 0.5, bold=True)

    def draw_choice(self, block: ChoiceBlock) -> None:
        size = self.label_pt
        r = self.r
        for j, opt in enumerate(block.options):
            self.text(block.x + j * block.option_pitch, block.y - r - 1.0, opt, size, bold=True, align="centre")
        label_pt = self.label_pt + 0.5
        right = block.x - r - 1.8
        room = right - self._left_obstacle(block.x, block.y)
        lines = _fit_label(block.label, FONT_BOLD, label_pt, room)
        if len(lines) > 2 or max(_width_mm(line, FONT_BOLD, label_pt) for line in lines) > room:
            # No room beside the bubbles: the label goes over the option letters instead.
            self.text(block.x - r, block.y - r - 1.0 - _cap_mm(size) - 1.5, block.label, label_pt, bold=True)
            return
        line_h = label_pt / PT_PER_MM * 1.15
        first_mid = block.y - (len(lines) - 1) * line_h / 2
        for k, line in enumerate(lines):
            self.text_mid(right, first_mid + k * line_h, line, label_pt, bold=True, align="right")

    def _left_obstacle(self, x: float, y: float) -> float:
        """The right edge (mm) of the nearest bubble-bearing block left of ``x`` on row ``y``."""
        edge = 0.0
        band = self.r + 2.5
        for g in page_layout(self.t, self.page, MM_PER_INCH).groups:
            for b in g.bubbles:
                if b.x < x - self.r and abs(b.y - y) < band:
                    # 2.5 mm beyond the bubble also clears a digit grid's write-in boxes.
                    edge = max(edge, b.x + self.r + 2.5)
        return edge

    def draw_label(self, label: str) -> None:
        """A student's name (and number) in bold on the page's name line, else
        centred in the top margin between the corner marks."""
        text = _printable_text(label)
        line = next((tb for tb in self.t.texts if tb.page == self.page and _name_line(tb)), None)
        if line is not None:
            prefix = line.text[:line.text.index("_")]
            run = len(line.text) - len(prefix) - len(line.text[len(prefix):].lstrip("_"))
            left = line.x + _width_mm(prefix, FONT_BOLD if line.bold else FONT, line.size) + 1.0
            room = _width_mm("_" * run, FONT, line.size) - 2.0
            size, text = _fit_text(text, FONT_BOLD, line.size, room)
            # Just above the underscores, which stay visible under the name.
            self.text(left, line.y - 0.7, text, size, bold=True, grey=0.0, guard=False)
            return
        top = [m for m in self.t.marks if m.y < self.t.page_height / 2]
        y_mid = min(m.y for m in top) if top else 6.0
        size = 10.0
        centre = self.t.page_width / 2
        band = (y_mid - _cap_mm(size), _cap_mm(size) * 2)
        left, right = 0.0, self.t.page_width
        for b in self.keep_out:
            if b.y < band[0] + band[1] and band[0] < b.y + b.h:
                if b.x + b.w <= centre:
                    left = max(left, b.x + b.w)
                elif b.x >= centre:
                    right = min(right, b.x)
        size, text = _fit_text(text, FONT_BOLD, size, 2 * min(centre - left, right - centre) - 1.0)
        self.text_mid(centre, y_mid, text, size, bold=True, align="centre", grey=0.0)

    def draw_footer(self) -> None:
        """The template name and page in small print between the bottom marks, so a
        sheet stays identifiable by eye when its QR code is damaged."""
        bottom = [m for m in self.t.marks if m.y > self.t.page_height / 2]
        y = max(m.y for m in bottom) if bottom else self.t.page_height - 6.0
        parts = [self.t.name, f"page {self.page} of {self.t.pages}"]
        for label, value in (("exam", self.payload.exam), ("student", self.payload.student)):
            if value and _printable(value):
                parts.append(f"{label} {value}")
        self.text_mid(self.t.page_width / 2, y, "  \u00b7  ".join(parts), 6.5, grey=0.45)


def _fit_label(label: str, font: str, size: float, room_mm: float) -> list[str]:
    """``label`` on one line if it fits in ``room_mm``, else broken at spaces into
    as few lines as fit (a single word longer than the room stays whole)."""
    if _width_mm(label, font, size) <= room_mm or " " not in label:
        return [label]
    lines: list[str] = []
    for word in label.split():
        if lines and _width_mm(lines[-1] + " " + word, font, size) <= room_mm:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


@lru_cache(maxsize=64)
def _qr_matrix(text: str) -> tuple:
    """The QR code's modules (rows of 0/1); cached, since choosing the mask is
    most of a page's time and a pile of blank sheets repeats one code."""
    return segno.make(text, error=QR_ERROR, micro=False).matrix


def _name_line(tb: TextBlock) -> bool:
    """Whether a template text is a name line: ``Name:`` followed by underscores."""
    at = tb.text.find(NAME_LINE)
    return at >= 0 and "___" in tb.text[at:] and tb.text.index("_") > at


def _fit_text(text: str, font: str, size: float, room_mm: float) -> tuple[float, str]:
    """``text`` at ``size`` pt if it fits in ``room_mm``; else at a smaller
    size (down to ``LABEL_MIN_PT``); else cut short with an ellipsis."""
    if _width_mm(text, font, size) > room_mm:
        size = max(LABEL_MIN_PT, size * room_mm / _width_mm(text, font, size))
    while len(text) > 1 and _width_mm(text, font, size) > room_mm:
        text = text[:-2].rstrip() + "\u2026"
    return size, text


def _printable_text(text: str) -> str:
    """``text`` with what the standard PDF fonts cannot print (outside
    Windows-1252, control characters) as ``?``."""
    out = []
    for ch in " ".join(text.split()):
        try:
            ch.encode("cp1252")
            out.append(ch if ch.isprintable() else "?")
        except UnicodeEncodeError:
            out.append("?")
    return "".join(out)


def _printable(text: str) -> bool:
    """Whether the standard PDF fonts can print ``text`` (they cover Windows-1252 only)."""
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return text.isprintable()
