"""Accuracy over simulated sheets: per distortion level and mark style, bubbles
read, accuracy, silent errors (wrong and not flagged) and flag rate.

    python bench/omr_accuracy.py [--sheets 4] [--jobs 2] [--template a4-100q-5]
    python bench/omr_accuracy.py --omrchecker [--sheets 4]

``--omrchecker`` reads sheets of an OMRChecker-format template instead (corner
markers, a roll number, MCQ blocks; the one the engine's tests read), drawn by
the same simulator with the same presets and mark styles, so the two kinds of
template are measured alike. Accuracy there is per output column; ``--shape
square`` or ``oval`` prints its bubbles so instead of as circles.
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
    template_name, preset, style, sheets, seed, _shape = args
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


def run_omrchecker_cell(args):
    _template_name, preset, style, sheets, seed, shape = args
    import numpy as np
    from _common import cv2

    from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes
    from batches.omr.omrchecker.render import expected_response, marker_image, simulate_omrchecker_sheet
    from batches.omr.synthetic import accuracy
    from tests.omr.test_omrchecker import MARKER_TEMPLATE

    t = load_omrchecker_template(MARKER_TEMPLATE, cv2.imencode(".png", marker_image())[1].tobytes())
    bubbles = sum(len(f.values) for f in t.fields)
    # Columns joined from several fields (a roll number) hold several characters by nature.
    joined = [c for c in t.output_columns if len(t.custom_labels.get(c, [c])) > 1]
    total = accuracy.Score()
    for i in range(sheets):
        rng = np.random.default_rng(seed * 1000 + i)
        answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields if rng.random() > 0.1}
        sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=seed * 1000 + i, style=style, shape=shape)
        reading = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
        truth = {"answers": expected_response(t, answers), "source": f"{preset}/{style}#{i}"}
        total.add(accuracy.score_sheet(reading, truth, bubbles, joined))
    return preset, style, total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sheets", type=int, default=4, help="sheets per cell")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--template", default="a4-100q-5")
    parser.add_argument("--preset", action="append")
    parser.add_argument("--style", action="append")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--omrchecker", action="store_true", help="an OMRChecker-format template's sheets")
    parser.add_argument("--shape", default="circle", choices=("circle", "square", "oval"),
                        help="with --omrchecker: the printed bubbles' shape")
    args = parser.parse_args()
    run = run_omrchecker_cell if args.omrchecker else run_cell
    cells = [(args.template, p, s, args.sheets, args.seed + i, args.shape)
             for i, (p, s) in enumerate(itertools.product(args.preset or PRESETS, args.style or STYLES))]
    print(f"{'preset':14} {'style':8} {'sheets':>6} {'failed':>6} {'bubbles':>8} {'accuracy':>9} "
          f"{'silent':>6} {'flagged':>8} {'needless':>8}")
    grand_silent = 0
    from batches.omr.synthetic.accuracy import Score

    grand = Score()
    with ProcessPoolExecutor(args.jobs) as pool:
        for preset, style, s in pool.map(run, cells):
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
