"""Printing a class: the roster PDF for 2,000 students, as the print worker
builds it, its time and size; and what the same pages cost drawn one whole
sheet at a time (no shared form), measured on a sample and scaled.

    python bench/printing.py [--students 2000] [--template a4-100q-5] [--sample 100]

Printed: seconds, pages, MB and ms per page for the print run, for 200 blank
sheets (one QR code for all), and for the sheet-at-a-time sample.
"""

from __future__ import annotations

import argparse
import io
import time

from _common import median  # noqa: F401  (sets one thread and the import path)

from batches.omr.render import PrintedSheet, render_pdf_bytes, render_sheets_pdf
from batches.omr.template import load_template


def roster(students: int) -> list[PrintedSheet]:
    """A class as the server prints it: exam id, student number, ``Name (number, group G)``."""
    return [PrintedSheet("1234", f"{20260000 + i}", f"Firstname{i % 97} Surname{i} ({20260000 + i}, group G{i % 12})")
            for i in range(students)]


def run(template, sheets: list[PrintedSheet]) -> tuple[float, int, int]:
    buf = io.BytesIO()
    start = time.perf_counter()
    pages = render_sheets_pdf(template, sheets, buf)
    return time.perf_counter() - start, pages, buf.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=2000)
    parser.add_argument("--template", default="a4-100q-5")
    parser.add_argument("--sample", type=int, default=100, help="sheets drawn one at a time for the comparison")
    args = parser.parse_args()
    template = load_template(args.template)

    seconds, pages, size = run(template, roster(args.students))
    print(f"roster print, {args.students} students, {args.template}: {seconds:.1f} s, {pages} pages, "
          f"{size / 1e6:.1f} MB ({seconds / pages * 1000:.1f} ms and {size / pages / 1000:.1f} KB per page)")

    seconds, pages, size = run(template, [PrintedSheet("1234")] * 200)
    print(f"200 blank sheets: {seconds:.2f} s, {size / 1e6:.2f} MB ({seconds / pages * 1000:.1f} ms per page)")

    sample = roster(args.sample)
    start = time.perf_counter()
    size = sum(len(render_pdf_bytes(template, exam=s.exam, student=s.student, label=s.label)) for s in sample)
    seconds = time.perf_counter() - start
    pages = args.sample * template.pages
    print(f"one whole sheet at a time ({args.sample} sampled): {seconds / pages * 1000:.1f} ms and "
          f"{size / pages / 1000:.1f} KB per page, so {seconds / pages * args.students * template.pages:.1f} s and "
          f"{size / pages * args.students * template.pages / 1e6:.1f} MB for {args.students} students")


if __name__ == "__main__":
    main()
