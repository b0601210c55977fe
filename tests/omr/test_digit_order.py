"""A digit grid printed the other way round than its template says (1..9, 0
against 0..9, ``Sandeep-1507``'s booklet number) is read as printed, told by
the ink of its printed digits (``omrchecker/digit_order.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes
from batches.omr.omrchecker.digit_order import ONE_FIRST, ZERO_FIRST, printed_orders
from batches.omr.omrchecker.render import simulate_omrchecker_sheet

#: Ink of a blank bubble printing each digit (darkness), as a sans typeface
#: gives it: "1" the least, then "7".
INK = {"0": 0.09, "1": 0.04, "2": 0.08, "3": 0.08, "4": 0.08, "5": 0.08, "6": 0.09, "7": 0.055, "8": 0.1, "9": 0.09}


def _grid(printed: tuple[str, ...], said: tuple[str, ...], columns: int, noise: float, seed: int = 0,
          marks: int = 1) -> tuple[list, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fields = [(0, 10 * c, said) for c in range(columns)]
    mean = np.concatenate([[INK[d] for d in printed] for _ in range(columns)]) + rng.normal(0, noise, 10 * columns)
    marked = np.zeros(10 * columns, bool)
    for c in range(columns):
        for k in rng.choice(10, marks, replace=False):
            marked[10 * c + k] = True
            mean[10 * c + k] = 0.8
    return fields, mean, marked


@pytest.mark.parametrize("printed, said", [(ONE_FIRST, ZERO_FIRST), (ZERO_FIRST, ONE_FIRST)])
def test_a_grid_printed_otherwise_than_said_is_read_as_printed(printed, said):
    fields, mean, marked = _grid(printed, said, columns=7, noise=0.004)
    assert printed_orders(fields, mean, marked) == {k: printed for k in range(7)}


def test_a_grid_printed_as_said_keeps_its_values():
    for order in (ZERO_FIRST, ONE_FIRST):
        fields, mean, marked = _grid(order, order, columns=7, noise=0.004)
        assert printed_orders(fields, mean, marked) == {}


def test_no_order_is_read_into_bubbles_without_printed_digits_or_too_few_of_them():
    fields, _mean, marked = _grid(ONE_FIRST, ZERO_FIRST, columns=7, noise=0.0)
    plain = np.full(len(marked), 0.02) + np.random.default_rng(1).normal(0, 0.004, len(marked))
    assert printed_orders(fields, plain, marked) == {}  # plain circles: differences are noise
    fields, mean, marked = _grid(ONE_FIRST, ZERO_FIRST, columns=2, noise=0.002)
    assert printed_orders(fields, mean, marked) == {}  # four comparisons: too few
    # Comparisons that point both ways are no evidence either.
    fields, mean, marked = _grid(ONE_FIRST, ZERO_FIRST, columns=8, noise=0.0)
    mean[:40] = np.concatenate([[INK[d] for d in ZERO_FIRST] for _ in range(4)])
    assert printed_orders(fields, mean, marked) == {}


def test_strokes_running_on_from_marks_into_the_next_bubble_are_no_printed_digits():
    # Plain circles; every column marked at "8" with a stroke drawn down into
    # it from the "7" above (the simulator's "across" style on a bitonal scan
    # read 1..9, 0 into a 0..9 grid this way when the stroke counted).
    rng = np.random.default_rng(2)
    fields = [(0, 10 * c, ZERO_FIRST) for c in range(8)]
    mean = 0.02 + rng.normal(0, 0.003, 80)
    marked = np.zeros(80, bool)
    marked[8::10] = True
    mean[8::10] = 0.8
    mean[7::10] = 0.3
    assert printed_orders(fields, mean, marked) == {}


def _template(field_type: str) -> dict:
    return {
        "pageDimensions": [700, 900],
        "bubbleDimensions": [30, 30],
        "fieldBlocks": {
            "Roll": {"fieldType": field_type, "fieldLabels": ["r1..6"], "origin": [80, 140],
                     "bubblesGap": 44, "labelsGap": 44},
            "MCQ": {"fieldType": "QTYPE_MCQ4", "fieldLabels": ["q1..10"], "origin": [420, 140],
                    "bubblesGap": 48, "labelsGap": 52},
        },
        "customLabels": {"Roll": ["r1..6"]},
    }


@pytest.mark.parametrize("seed", [3, 8])
def test_a_simulated_booklet_grid_printed_one_to_zero_reads_as_printed(seed):
    printed = load_omrchecker_template(json.dumps(_template("QTYPE_INT_FROM_1")))
    said = load_omrchecker_template(json.dumps(_template("QTYPE_INT")))
    rng = np.random.default_rng(seed)
    roll = "".join(str(d) for d in rng.integers(0, 10, 6))
    answers = {f"r{i + 1}": roll[i] for i in range(6)} | {f"q{i}": "ABCD"[rng.integers(4)] for i in range(1, 11)}
    jpeg = simulate_omrchecker_sheet(printed, answers, preset="scan_mild", seed=seed).encode_jpeg()
    out = read_omrchecker_image_bytes(jpeg, said)[0]
    assert out.answers["Roll"] == roll
    assert any("printed 1..9, 0, not 0..9 as the template says" in n for n in out.notes), out.notes
    # The same sheet read with the template that says how it is printed: no note.
    right = read_omrchecker_image_bytes(jpeg, printed)[0]
    assert right.answers["Roll"] == roll and not any("as the template says" in n for n in right.notes)


def test_the_real_booklet_numbers_printed_one_to_zero_read_as_printed():
    # Sandeep-1507's template reads its booklet grid as QTYPE_INT (0..9); the
    # sheets print 1..9, 0 in the bubbles (tests/data/real-sheets/README.md).
    from tests.omr.real_sheets import ROOT, real_captures

    template = load_omrchecker_template(ROOT / "community" / "Sandeep-1507" / "template.json")
    captures = real_captures("community/Sandeep-1507")
    assert len(captures) == 3
    for row, image in captures:
        out = read_omrchecker_image_bytes(image.read_bytes(), template)[0]
        assert out.answers["Booklet_No"] == row["Booklet_No"], image.name
        assert any(n.startswith("b1, b2, b3, b4, b5, b6, b7: printed 1..9, 0") for n in out.notes), out.notes
