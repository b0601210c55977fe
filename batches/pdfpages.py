"""Render a PDF's pages to grey PNG files: run as a child process by ``extract``.

``python -m batches.pdfpages IN.pdf OUTDIR --dpi 200 --max-pages N --max-pixels P``
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


def render(source: Path, out: Path, dpi: float, max_pages: int, max_pixels: int) -> int:
    """Render every page; returns the page count. Raises ``ValueError`` with a reason."""
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
            raise ValueError(f"the PDF has {count} pages, over the limit of {max_pages}")
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
            if not cv2.imwrite(str(out / f"{index + 1:05d}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise ValueError(f"page {index + 1} cannot be written")
            page.close()
        return count
    finally:
        pdf.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batches.pdfpages")
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dpi", type=float, default=200.0)
    parser.add_argument("--max-pages", type=int, default=10_000)
    parser.add_argument("--max-pixels", type=int, default=60_000_000)
    args = parser.parse_args(argv)
    try:
        count = render(args.source, args.out, args.dpi, args.max_pages, args.max_pixels)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"pages": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
