"""Render a PDF's pages to grey PNG files: run as a child process by ``extract``.

``python -m batches.pdfpages IN.pdf OUTDIR --dpi 200 --max-pages N --max-pixels P --max-bytes B``
writes ``OUTDIR/00001.png``... and prints ``{"pages": n}``, or prints
``{"error": "..."}`` and exits 2. PDFium is not thread-safe and a hostile file
can make it spin or crash, so it never runs inside a worker or web process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def render(source: Path, out: Path, dpi: float, max_pages: int, max_pixels: int, max_bytes: int | None = None) -> int:
    """Render every page; returns the page count. Raises ``ValueError`` with a reason.

    A page box over ``max_pixels`` at ``dpi`` is rendered at a smaller scale
    instead; more than ``max_pages`` pages, or PNG files adding up to more than
    ``max_bytes``, stop the rendering (the messages name the settings).
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
            scale = dpi / 72.0
            # A huge page box would make a huge bitmap: clamp to the pixel cap.
            if width_pt * height_pt * scale * scale > max_pixels:
                scale = math.sqrt(max_pixels / (width_pt * height_pt)) * 0.999
            bitmap = page.render(scale=scale, grayscale=True)
            image = bitmap.to_numpy()
            if image.ndim == 3:
                image = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
            ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:
                raise ValueError(f"page {index + 1} cannot be converted")
            written += len(png)
            if max_bytes is not None and written > max_bytes:
                limit = _size(max_bytes)
                raise ValueError(f"the pages of the PDF take more than {limit}; the limit is {limit} "
                                 "(OMR_MAX_UNCOMPRESSED_MB)")
            try:
                (out / f"{index + 1:05d}.png").write_bytes(png.tobytes())
            except OSError as exc:
                raise ValueError(f"page {index + 1} cannot be written ({exc.strerror or exc})") from None
            page.close()
        return count
    finally:
        pdf.close()


def _size(n: int) -> str:
    """A byte count for messages, as ``extract`` writes them (MB = 2**20 bytes)."""
    return f"{n / 1024**2:,.0f} MB" if n >= 1024**2 else f"{n:,} bytes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batches.pdfpages")
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dpi", type=float, default=200.0)
    parser.add_argument("--max-pages", type=int, default=10_000)
    parser.add_argument("--max-pixels", type=int, default=60_000_000)
    parser.add_argument("--max-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        count = render(args.source, args.out, args.dpi, args.max_pages, args.max_pixels, args.max_bytes)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"pages": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
