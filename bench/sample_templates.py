"""Simulated sheets of every OMRChecker sample template kept in ``tests/data``
(those of the real sheets and those without images), read back.

    python bench/sample_templates.py [--presets clean,scan_mild,scan_letters] [--sheets 3] [--only NAME] [-v]

A template is read right the first time only if its own layout holds no
trap: single columns a pitch apart, a grid of like columns, a form of a few
boxes. Per template and ``simulate`` preset, ``--sheets`` sheets are filled
at random (each field answered with one of its values, nine in ten of them)
and read. Per template it prints: sheets, refused, fields, wrong fields, of
which silent (neither the field nor the sheet flagged: must stay 0) and in
unflagged fields of a flagged sheet, right fields flagged, and sheets sent to
review. Sample 5's marker image is not kept: sample1's is given to it (the
same design). ``-v`` names every wrong field and refusal.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))

from batches.omr.flags import NOT_REVIEW  # noqa: E402
from batches.omr.omrchecker import (  # noqa: E402
    OmrCheckerTemplateError,
    load_omrchecker_template,
    read_omrchecker_image_bytes,
)
from batches.omr.omrchecker.render import expected_response, simulate_omrchecker_sheet  # noqa: E402

MARKER = DATA / "real-sheets" / "omrchecker" / "sample1" / "omr_marker.jpg"


def templates() -> list[tuple[str, Path]]:
    out = []
    for root in (DATA / "real-sheets" / "omrchecker", DATA / "omrchecker-templates"):
        out += [(p.parent.relative_to(root).as_posix(), p) for p in sorted(root.glob("**/template.json"))]
    return out


def load(path: Path):
    try:
        return load_omrchecker_template(path)
    except OmrCheckerTemplateError:
        return load_omrchecker_template(path, MARKER.read_bytes())  # a marker image not kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="clean,scan_mild,scan_letters")
    ap.add_argument("--sheets", type=int, default=3, help="sheets per template and preset")
    ap.add_argument("--only", default="", help="templates whose name holds this")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    total = Counter()
    for name, path in templates():
        if a.only not in name:
            continue
        t = load(path)
        c = Counter()
        for preset in a.presets.split(","):
            for seed in range(a.sheets):
                rng = np.random.default_rng(seed)
                answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields if rng.random() < 0.9}
                sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=seed)
                out = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
                c["sheets"] += 1
                if out["error"]:
                    c["refused"] += 1
                    if a.verbose:
                        print(f"  refused {name} {preset} {seed}: {out['error']}")
                    continue
                c["review"] += bool(out["needs_review"])
                for col, want in expected_response(t, answers).items():
                    got = out["answers"].get(col)
                    flagged = bool(set(out["flags"].get(col, [])) - NOT_REVIEW)
                    c["fields"] += 1
                    if got == want:
                        c["right_flagged"] += flagged
                        continue
                    c["wrong"] += 1
                    c["silent"] += not flagged and not out["needs_review"]
                    c["unflagged_field"] += not flagged and bool(out["needs_review"])
                    if a.verbose:
                        print(f"  {'SILENT' if not (flagged or out['needs_review']) else 'wrong'} {name} {preset} "
                              f"{seed} {col}: read {got!r}, truth {want!r} ({out['alignment']})")
        total.update(c)
        print(f"{name:40s} " + _figures(c), flush=True)
    print(f"{'all':40s} " + _figures(total))


def _figures(c: Counter) -> str:
    return (f"sheets={c['sheets']} refused={c['refused']} fields={c['fields']} wrong={c['wrong']} "
            f"silent={c['silent']} (in unflagged fields {c['unflagged_field']}) right_flagged={c['right_flagged']} "
            f"review={c['review']}")


if __name__ == "__main__":
    main()
