"""The real OMRChecker sample sheets of ``tests/data/real-sheets/omrchecker``
and their hand-checked truth (``README.md`` there), as the tests and the
benchmarks read them."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "data" / "real-sheets" / "omrchecker"
#: The sets with a truth, as paths below ``ROOT``.
SETS = sorted(p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("**/ground_truth.csv"))


def set_id(set_path: str) -> str:
    """The set's name in ``manifest.csv`` and ``ground_truth_long.csv``."""
    return "sample3" if set_path.startswith("sample3") else set_path


@lru_cache(maxsize=1)
def long_truth() -> tuple[dict[tuple, set[str]], set[tuple]]:
    """(the accepted alternatives per (set, image, column), upper case; the
    (set, image) of sheets with a mark a person would call doubtful: an
    ambiguous one, or several marks in a field that is not a number)."""
    alternatives: dict[tuple, set[str]] = {}
    doubtful: set[tuple] = set()
    with open(ROOT / "ground_truth_long.csv", newline="") as f:
        for r in csv.DictReader(f):
            key = (r["set_id"], Path(r["image"]).name)
            if r["accepted_alternatives"]:
                alternatives.setdefault(key + (r["output_column"],), set()).update(
                    a.upper() for a in r["accepted_alternatives"].split("|"))
            e = r["expected"]
            if r["ambiguous"] == "1" or (len(e) > 1 and not e.isdigit()):
                doubtful.add(key)
    return alternatives, doubtful


def real_captures(set_path: str) -> list[tuple[dict, Path]]:
    """(truth row, image) of every real capture of the set (``manifest.csv``
    marks the one synthetic image)."""
    with open(ROOT / "manifest.csv", newline="") as f:
        real = {(r["set_id"], Path(r["image"]).name): r["real_capture"] == "yes" for r in csv.DictReader(f)}
    with open(ROOT / set_path / "ground_truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(row, ROOT / set_path / row["file"]) for row in rows
            if real.get((set_id(set_path), Path(row["file"]).name), True)]


def norm(value: str | None, empty: str) -> str:
    """An answer as the truth writes it: upper case, a non-digit empty value left out."""
    value = (value or "").strip()
    if empty and not empty.isdigit():
        value = value.replace(empty, "")
    return value.upper()
