"""Accuracy over simulated sheets: per distortion level and mark style, bubbles
read, accuracy, silent errors (wrong and not flagged) and flag rate.

    python bench/omr_accuracy.py [--sheets 4] [--jobs 2] [--template a4-100q-5]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from concurrent.futures import ProcessPoolExecutor

from _common import make_sheets

PRESETS = ["clean", "scan_mild", "scan_moderate", "scan_hard", "photo_mild", "photo_hard",
           "scan_letters", "scan_bitonal", "scan_lowres", "photo_exif"]
STYLES = ["filled", "pencil", "light", "half", "tick", "cross", "mixed", "pen", "scribble", "across", "paper"]


def run_cell(args):
    template_name, preset, style, sheets, seed = args
    from batches.omr import load_template, page_layout, reader
    from batches.omr.synthetic import accuracy

    template = load_template(template_name)
    bubbles = len(page_layout(template, 1).bubbles)
    digit_fields = [b.name for b in template.digit_grids]
    total = accuracy.Score()
    for data, truth in make_sheets(template, sheets, preset, seed=seed, style=style):
        # The batch names its template, as a batch upload does.
        reading = reader.read_image_bytes(data, template)[0].to_dict()
        total.add(accuracy.score_sheet(reading, truth, bubbles, digit_fields))
    return preset, style, total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sheets", type=int, default=4, help="sheets per cell")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--template", default="a4-100q-5")
    parser.add_argument("--preset", action="append")
    parser.add_argument("--style", action="append")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cells = [(args.template, p, s, args.sheets, args.seed + i)
             for i, (p, s) in enumerate(itertools.product(args.preset or PRESETS, args.style or STYLES))]
    print(f"{'preset':14} {'style':8} {'sheets':>6} {'failed':>6} {'bubbles':>8} {'accuracy':>9} "
          f"{'silent':>6} {'flagged':>8} {'needless':>8}")
    grand_silent = 0
    from batches.omr.synthetic.accuracy import Score

    grand = Score()
    with ProcessPoolExecutor(args.jobs) as pool:
        for preset, style, s in pool.map(run_cell, cells):
            grand.add(s)
            grand_silent += s.silent_errors
            print(f"{preset:14} {style:8} {s.sheets:6} {s.failed_sheets:6} {s.bubbles:8} {s.accuracy:9.2%} "
                  f"{s.silent_errors:6} {s.flag_rate:8.1%} {s.needless_rate:8.1%}", flush=True)
            for line in s.silent[:5]:
                print(f"    silent: {line}")
    print(f"\nall: {grand.sheets} sheets, {grand.bubbles} bubbles, {grand.fields} fields, accuracy {grand.accuracy:.2%}, "
          f"silent errors {grand.silent_errors}, flagged {grand.flag_rate:.1%}, needless {grand.needless_rate:.1%}, "
          f"failed sheets {grand.failed_sheets}")
    return 1 if grand_silent else 0


if __name__ == "__main__":
    sys.exit(main())
