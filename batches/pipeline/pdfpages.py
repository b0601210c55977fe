"""A PDF's pages as image files: run as a child process by ``extract``.

``python -m batches.pipeline.pdfpages IN.pdf OUTDIR --dpi 200 --max-pages N --max-pixels P --max-bytes B``
writes ``OUTDIR/00001.jpg`` or ``OUTDIR/00001.png``... and prints ``{"pages": n}``,
or prints ``{"error": "..."}`` and exits 2. PDFium is not thread-safe and a
hostile file can make it spin or crash, so it never runs inside a worker or web
process; ``--max-memory-mb``, ``--max-cpu-seconds`` and ``--parent-pid`` confine
the child (``confine``).

A scanner's PDF usually holds one JPEG per page, covering the page: that JPEG
is written as it is (decoding it later takes ~15 ms; rendering the page and
decoding the PNG takes ~10 times that), after checking its header against the
pixel cap and that it looks like the rendered page (a thumbnail of each,
compared), so that a ``/Decode`` array, a mask or anything drawn over it is
never lost. Every other page is rendered to a grey PNG at ``--dpi``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

#: Largest mean difference (of 255) between the rendered thumbnail of a page and
#: its embedded JPEG's for the JPEG to stand for the page.
THUMB_TOLERANCE = 10.0
_THUMB_SIDE = 96  # pixels, the long side of the thumbnails compared


def render(source: Path, out: Path, dpi: float, max_pages: int, max_pixels: int, max_bytes: int | None = None,
           embedded: bool = True) -> int:
    """Write every page; returns the page count. Raises ``ValueError`` with a reason.

    A page box over ``max_pixels`` at ``dpi`` is rendered at a smaller scale
    instead; an embedded JPEG over ``max_pixels`` is not used. More than
    ``max_pages`` pages, or page files adding up to more than ``max_bytes``,
    stop it (the messages name the settings). ``embedded=False`` renders every page.
    """
    import cv2
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(source))
    except pdfium.PdfiumError as exc:
        text = str(exc).lower()
        if "password" in text or "security" in text:
            raise ValueError("password-protected PDFs are not supported") from None
        raise ValueError("the PDF is damaged or not a PDF") from None
    try:
        count = len(pdf)
        if count == 0:
            raise ValueError("the PDF has no pages")
        if count > max_pages:
            raise ValueError(f"the PDF has {count:,} pages; the limit is {max_pages:,} (OMR_MAX_PAGES)")
        written = 0
        for index in range(count):
            page = pdf[index]
            width_pt, height_pt = page.get_size()
            if width_pt <= 0 or height_pt <= 0:
                raise ValueError(f"page {index + 1} has an empty page box")
            data = _embedded_jpeg(page, max_pixels) if embedded else None
            suffix = ".jpg"
            if data is None:
                scale = dpi / 72.0
                # A huge page box would make a huge bitmap: clamp to the pixel cap.
                if width_pt * height_pt * scale * scale > max_pixels:
                    scale = math.sqrt(max_pixels / (width_pt * height_pt)) * 0.999
                image = _grey(page.render(scale=scale, grayscale=True).to_numpy())
                ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                if not ok:
                    raise ValueError(f"page {index + 1} cannot be converted")
                data, suffix = png.tobytes(), ".png"
            written += len(data)
            if max_bytes is not None and written > max_bytes:
                limit = _size(max_bytes)
                raise ValueError(f"the pages of the PDF take more than {limit}; the limit is {limit} "
                                 "(OMR_MAX_UNCOMPRESSED_MB)")
            try:
                (out / f"{index + 1:05d}{suffix}").write_bytes(data)
            except OSError as exc:
                raise ValueError(f"page {index + 1} cannot be written ({exc.strerror or exc})") from None
            page.close()
        return count
    finally:
        pdf.close()


def _grey(image):
    import cv2

    if image.ndim == 3:
        return image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    return image


def jpeg_header(data: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, components, has_exif) from a JPEG's markers, or None
    when they cannot be read. Decodes nothing."""
    if data[:2] != b"\xff\xd8":
        return None
    i, exif = 2, False
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
            exif = True
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(data):
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height, data[i + 9], exif
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _embedded_jpeg(page, max_pixels: int) -> bytes | None:
    """The page's JPEG when the page is exactly one upright JPEG covering it,
    within the pixel cap, and its thumbnail matches the rendered page's; else None."""
    import cv2
    import numpy as np
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        if page.get_rotation() != 0:
            return None
        objects = list(page.get_objects(max_depth=1))
        if len(objects) != 1 or objects[0].type != pdfium_c.FPDF_PAGEOBJ_IMAGE:
            return None
        image = objects[0]
        if image.get_filters() != ["DCTDecode"]:
            return None
        m = image.get_matrix()
        if m.b or m.c or m.a <= 0 or m.d <= 0:
            return None  # rotated, skewed or mirrored on the page
        left, bottom, right, top = image.get_pos()
        box = page.get_cropbox()
        if max(abs(left - box[0]), abs(bottom - box[1]), abs(right - box[2]), abs(top - box[3])) > 1.5:
            return None  # does not cover the page exactly
        data = bytes(image.get_data(decode_simple=False))
    except (pdfium.PdfiumError, ValueError, AttributeError, OSError):
        return None
    header = jpeg_header(data)
    if header is None:
        return None
    width, height, components, exif = header
    if exif or components not in (1, 3) or width * height <= 0 or width * height > max_pixels:
        return None  # EXIF orientation would turn it; CMYK; or over the cap: render instead
    # The JPEG must look like the page PDFium draws: compare small thumbnails.
    width_pt, height_pt = page.get_size()
    scale = _THUMB_SIDE / max(width_pt, height_pt)
    try:
        drawn = _grey(page.render(scale=scale, grayscale=True).to_numpy())
    except pdfium.PdfiumError:
        return None
    factor = next((f for f in (8, 4, 2) if max(width, height) / f >= 2 * _THUMB_SIDE), 1)
    flag = {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 1: cv2.IMREAD_GRAYSCALE}[factor]
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if decoded is None or drawn.size == 0:
        return None
    small = cv2.resize(decoded, (drawn.shape[1], drawn.shape[0]), interpolation=cv2.INTER_AREA)
    if float(np.mean(cv2.absdiff(small, drawn))) > THUMB_TOLERANCE:
        return None
    return data


def _size(n: int) -> str:
    """A byte count for messages, as ``extract`` writes them (MB = 2**20 bytes)."""
    return f"{n / 1024**2:,.0f} MB" if n >= 1024**2 else f"{n:,} bytes"


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def confine(max_memory_mb: int | None, max_cpu_seconds: int | None, parent_pid: int | None) -> None:
    """Limits set by the child on itself before it opens the PDF: the address
    space and the CPU time it may use (past either the kernel stops it), and
    SIGKILL when its parent dies, so a killed worker leaves no renderer behind.
    (Set here, not in the parent between fork and exec, which is unsafe in a
    threaded worker; nothing hostile has been read yet.)"""
    import resource
    import signal

    if max_memory_mb:
        limit = max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if max_cpu_seconds:
        # SIGXCPU at the soft limit, SIGKILL a little later.
        resource.setrlimit(resource.RLIMIT_CPU, (max_cpu_seconds, max_cpu_seconds + 5))
    if parent_pid:
        import ctypes
        import os

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: the parent's timeout still stops the child
            pass
        if os.getppid() != parent_pid:  # the parent died before the line above
            sys.exit(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batches.pipeline.pdfpages")
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dpi", type=float, default=200.0)
    parser.add_argument("--max-pages", type=int, default=10_000)
    parser.add_argument("--max-pixels", type=int, default=60_000_000)
    parser.add_argument("--max-bytes", type=int, default=None)
    parser.add_argument("--render-all", action="store_true", help="render every page, even a single JPEG")
    parser.add_argument("--max-memory-mb", type=int, default=None, help="address space limit of this process")
    parser.add_argument("--max-cpu-seconds", type=int, default=None, help="CPU time limit of this process")
    parser.add_argument("--parent-pid", type=int, default=None, help="die when this process (the worker) dies")
    args = parser.parse_args(argv)
    confine(args.max_memory_mb, args.max_cpu_seconds, args.parent_pid)
    try:
        count = render(args.source, args.out, args.dpi, args.max_pages, args.max_pixels, args.max_bytes,
                       embedded=not args.render_all)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"pages": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
