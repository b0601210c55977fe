"""Reading speed on one core: sheets per second for 300-dpi A4 100-question JPEG
scans and phone photos (``--preset photo_mild``), the time per step, and a bare
JPEG decode of the same files to compare; then photographed and scanned sheets
of an OMRChecker-format template (corner markers, roll number, MCQ blocks).

    python bench/omr_speed.py [--sheets 100] [--preset clean] [--template a4-100q-5]
                              [--omrchecker-sheets 10] [--omrchecker-preset photo_mild]
    python bench/omr_speed.py --sheets 0 --omrchecker-template T.json --images DIR

The second form times real files (every JPEG/PNG in DIR) read with an OMRChecker
template, the way OMRChecker itself would be timed on them. Run it on a quiet
machine; the ratio to the bare decode is the stable figure.
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
    parser.add_argument("--omrchecker-sheets", type=int, default=10, help="OMRChecker-format sheets per preset")
    parser.add_argument("--omrchecker-preset", action="append",
                        help="presets for the OMRChecker-format sheets; default scan_mild, photo_mild")
    parser.add_argument("--omrchecker-template", help="a real OMRChecker template.json (with --images)")
    parser.add_argument("--images", help="folder of sheet images to read with --omrchecker-template")
    args = parser.parse_args()
    if args.sheets > 0:
        builtin(args)
    if args.omrchecker_template:
        real_files(args)
    elif args.omrchecker_sheets > 0:
        omrchecker(args)


def builtin(args: argparse.Namespace) -> None:

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


#: An OMRChecker template like its sample 1 (page px after the corner markers),
#: the one the engine's tests read.
from tests.omr.test_omrchecker import MARKER_TEMPLATE as OMRCHECKER_TEMPLATE  # noqa: E402


def omrchecker(args: argparse.Namespace) -> None:
    """Simulated OMRChecker-format sheets: speed, and how many read right."""
    from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes
    from batches.omr.omrchecker.render import expected_response, marker_image, simulate_omrchecker_sheet

    marker = cv2.imencode(".png", marker_image())[1].tobytes()
    t = load_omrchecker_template(OMRCHECKER_TEMPLATE, marker)
    print(f"\nOMRChecker-format sheets (CropOnMarkers, {len(t.fields)} fields), {args.omrchecker_sheets} per preset")
    for preset in args.omrchecker_preset or ["scan_mild", "photo_mild"]:
        sheets = []
        for i in range(args.omrchecker_sheets):
            rng = np.random.default_rng(1000 + i)
            answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields if rng.random() > 0.1}
            sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=1000 + i)
            sheets.append((sim.encode_jpeg(), expected_response(t, answers), sim.image.shape))
        best, right, flagged, silent, failed = float("inf"), 0, 0, 0, 0
        steps: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            right = flagged = silent = failed = 0
            steps = {}
            t0 = time.perf_counter()
            for data, expected, _ in sheets:
                out = read_omrchecker_image_bytes(data, t)[0].to_dict()
                failed += bool(out["error"])
                for k, v in out["timings_ms"].items():
                    steps.setdefault(k, []).append(v)
                for col, value in expected.items():
                    if out["answers"].get(col) == value:
                        right += 1
                    elif out["sheet_flags"] or set(out["flags"].get(col, [])) - {"blank"}:
                        flagged += 1
                    else:
                        silent += 1
            best = min(best, time.perf_counter() - t0)
        per = best / len(sheets)
        h, w = sheets[0][2][:2]
        print(f"[{preset}] {w}x{h} px: {1 / per:5.1f} sheets/s ({per * 1000:.0f} ms/sheet); answers right {right}, "
              f"wrong but flagged {flagged}, silent errors {silent}; sheets refused {failed}")
        print("  median per step (ms): " + ", ".join(f"{k} {median(v):.1f}" for k, v in steps.items()))


def real_files(args: argparse.Namespace) -> None:
    """Every image in ``--images`` read with ``--omrchecker-template``."""
    from pathlib import Path

    from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes

    t = load_omrchecker_template(Path(args.omrchecker_template))
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    datas = [p.read_bytes() for p in files]
    t0 = time.perf_counter()
    failed = review = 0
    for data, p in zip(datas, files, strict=True):
        for r in read_omrchecker_image_bytes(data, t, source=p.name):
            failed += bool(r.error)
            review += r.needs_review
    dt = time.perf_counter() - t0
    print(f"{len(files)} files with {args.omrchecker_template}: {len(files) / dt:.2f} sheets/s "
          f"({dt / max(1, len(files)) * 1000:.0f} ms/sheet), refused {failed}, needs review {review}")


if __name__ == "__main__":
    main()
