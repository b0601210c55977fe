"""The reader over the simulator's presets: good captures read exactly, hard
ones may be flagged but never silently wrong."""

from __future__ import annotations

import random

import pytest

from batches.omr import load_template, page_layout
from batches.omr.reader import read_image_bytes
from batches.omr.synthetic import accuracy, simulate

A4 = load_template("a4-100q-5")


def _score(template, preset, seed, **kw):
    answers = simulate.random_answers(template, 1, random.Random(seed))
    sim = simulate.simulate_sheet(template, answers, page=1, seed=seed, preset=preset, **kw)
    (reading,) = read_image_bytes(sim.encode_jpeg(), template, source=f"{preset}-{seed}.jpg")
    d = reading.to_dict()
    bubbles = len(page_layout(template, 1).bubbles)
    return d, accuracy.score_sheet(d, sim.truth, bubbles, [b.name for b in template.digit_grids])


@pytest.mark.parametrize("preset", ["clean", "scan_mild", "photo_mild"])
def test_good_captures_read_every_answer(preset):
    for seed in (11, 12):
        d, s = _score(A4, preset, seed)
        assert d["error"] is None and d["sheet_flags"] == [], (d["error"], d["sheet_flags"])
        assert s.right == s.fields, s.silent or f"{s.wrong_flagged} wrong (flagged)"


@pytest.mark.parametrize("preset", ["scan_moderate", "scan_hard", "photo_hard"])
def test_hard_captures_are_never_silently_wrong(preset):
    for seed in (21, 22):
        d, s = _score(A4, preset, seed)
        assert s.silent_errors == 0, s.silent
        # Most of it is still read right.
        assert s.right >= 0.8 * s.fields or d["error"], (s.right, s.fields)


@pytest.mark.parametrize("style", ["tick", "cross", "light", "half", "circled"])
def test_mark_styles(style):
    d, s = _score(A4, "scan_mild", 31, style=style)
    assert s.silent_errors == 0, s.silent
    assert s.right >= 0.97 * s.fields


def test_other_templates():
    for name in ("letter-50q-4", "a4-20q-5"):
        t = load_template(name)
        d, s = _score(t, "scan_moderate", 41)
        assert s.silent_errors == 0, s.silent
        assert s.right == s.fields or s.wrong_flagged, (s.right, s.fields)


def test_a_dash_across_two_bubbles_reads_the_one_it_crosses_flagged():
    # The dash runs on into the neighbouring bubble across the paper between
    # them: the one it crosses is the answer, flagged (a light second mark
    # under the dash would look alike), not a double mark.
    d, s = _score(A4, "scan_mild", 33, style="across")
    assert s.silent_errors == 0, s.silent
    assert s.right >= 0.97 * s.fields, (s.right, s.fields)
    dashed = [f for f, v in d["answers"].items() if f.startswith("q") and len(v) == 1]
    assert dashed and all("multiple" not in d["flags"][f] for f in dashed)
    assert sum("ambiguous" in d["flags"][f] for f in dashed) >= 0.8 * len(dashed)


def test_an_erased_answer_as_dark_as_the_sheets_light_marks_is_flagged():
    # Light marks throughout, and an earlier answer erased to a residue as
    # dark as they are: the eraser rubbed the printed outline too, so the
    # residue, read as a mark, is flagged as a possible erasure.
    seed = 108 * 100_003
    answers = simulate.random_answers(A4, 1, random.Random(seed))
    sim = simulate.simulate_sheet(A4, answers, page=1, seed=seed, preset="photo_exif", style="light")
    assert "q1" in sim.truth["erased"] and sim.truth["answers"]["q1"] == ""
    (reading,) = read_image_bytes(sim.encode_jpeg(), A4)
    d = reading.to_dict()
    s = accuracy.score_sheet(d, sim.truth, 0, [b.name for b in A4.digit_grids])
    assert s.silent_errors == 0, s.silent
    assert "erasure" in d["flags"]["q1"]
    assert s.right >= 0.97 * s.fields


@pytest.mark.parametrize("sheet", [(134, 0), (3, 3), (134, 2), (180, 0)])
def test_light_marks_lost_in_a_two_level_scan_are_flagged_not_read_blank(sheet):
    # A 300-dpi black & white scan keeps only a few black pixels of a light
    # pencil mark, no more than the letter printed in a blank bubble holds.
    # (134, 0): no mark stands clear, so most answers read blank; (3, 3): the
    # same, and one of a double mark read alone; (134, 2): clear marks, and
    # beside one of them a second mark left as a few black pixels ((180, 0):
    # barely above the noise). None of it may read as a sure answer.
    cell, i = sheet
    d, s = _score(A4, "scan_bitonal", cell * 100_003 + i, style="light")
    assert s.silent_errors == 0, s.silent
    assert s.wrong_flagged > 0  # the marks did vanish: the sheet is hard, not read


def test_a_two_level_scan_of_firm_marks_is_not_flooded_with_flags():
    for style in ("pencil", "tick"):
        d, s = _score(A4, "scan_bitonal", 55 * 100_003, style=style)
        assert s.right == s.fields, s.silent
        assert s.flagged <= 0.1 * s.fields, (style, s.flagged)


def test_a_black_and_white_scan_is_told_from_a_grey_one():
    import cv2
    import numpy as np

    from batches.omr.decide import is_two_level

    def capture(preset):
        sim = simulate.simulate_sheet(A4, {}, page=1, seed=5, preset=preset)
        return cv2.imdecode(np.frombuffer(sim.encode_jpeg(), np.uint8), cv2.IMREAD_GRAYSCALE)

    bitonal = capture("scan_bitonal")
    assert is_two_level(bitonal)
    # Still two-level once JPEG-compressed and decoded at half size.
    assert is_two_level(cv2.resize(bitonal, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    for preset in ("clean", "scan_mild", "scan_letters", "photo_mild"):
        assert not is_two_level(capture(preset)), preset
    assert not is_two_level(np.full((64, 64), 255, np.uint8))
