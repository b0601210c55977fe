"""Reading speed on one core: sheets per second for 300-dpi A4 100-question JPEG
scans, the time per step, and a bare JPEG decode of the same files to compare.

    python bench/omr_speed.py [--sheets 100] [--preset clean] [--template a4-100q-5]

Run it on a quiet machine; the ratio to the bare decode is the stable figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import cv2, make_sheets, median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sheets", type=int, default=100)
    parser.add_argument("--preset", action="append", help="simulator preset(s); default clean, scan_mild, photo_mild")
    parser.add_argument("--template", default="a4-100q-5")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the sheets; the best pass counts")
    args = parser.parse_args()

    from batches.omr import load_template, reader

    template = load_template(args.template)
    print(f"template {template.name}, {args.sheets} sheets per preset, one process, cv2 threads {cv2.getNumThreads()}")
    for preset in args.preset or ["clean", "scan_mild", "photo_mild"]:
        t0 = time.perf_counter()
        sheets = make_sheets(template, args.sheets, preset)
        made = time.perf_counter() - t0
        sizes = [len(data) for data, _ in sheets]
        first = cv2.imdecode(np.frombuffer(sheets[0][0], np.uint8), cv2.IMREAD_GRAYSCALE)

        def bare(flag, sheets=sheets):
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                for data, _ in sheets:
                    cv2.imdecode(np.frombuffer(data, np.uint8), flag)
                best = min(best, time.perf_counter() - t)
            return best / len(sheets)

        full = bare(cv2.IMREAD_GRAYSCALE)
        reduced = bare(cv2.IMREAD_REDUCED_GRAYSCALE_2)

        best = float("inf")
        steps: dict[str, list[float]] = {}
        failed = review = 0
        for _ in range(args.repeat):
            steps = {}
            failed = review = 0
            t = time.perf_counter()
            for data, _ in sheets:
                for reading in reader.read_image_bytes(data, template):
                    out = reading.to_dict()
                    failed += bool(out.get("error"))
                    review += bool(out.get("needs_review"))
                    for k, v in (out.get("timings_ms") or {}).items():
                        steps.setdefault(k, []).append(v)
            best = min(best, time.perf_counter() - t)
        per_sheet = best / len(sheets)
        print(f"\n[{preset}] {first.shape[1]}x{first.shape[0]} px, JPEG {np.mean(sizes) / 1e6:.2f} MB avg "
              f"(made in {made:.1f} s)")
        print(f"  read:               {1 / per_sheet:6.1f} sheets/s  ({per_sheet * 1000:.1f} ms/sheet)"
              f"  failed {failed}, needs review {review}")
        print(f"  bare decode full:   {1 / full:6.1f} sheets/s  ({full * 1000:.1f} ms)")
        print(f"  bare decode 1/2:    {1 / reduced:6.1f} sheets/s  ({reduced * 1000:.1f} ms)")
        print(f"  read / full decode: {per_sheet / full:.2f}x   target: >= 35 sheets/s, within ~2x of decode")
        print("  median per step (ms): " + ", ".join(f"{k} {median(v):.1f}" for k, v in steps.items()))


if __name__ == "__main__":
    main()
