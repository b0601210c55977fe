"""Simulated sheets of OMRChecker's own sample templates (``tests/data``), read
back: what a sheet printed from a template no image of which is at hand
brings. Each of these read wrong before the rule it pins, silently."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes
from batches.omr.omrchecker.render import expected_response, simulate_omrchecker_sheet

DATA = Path(__file__).resolve().parent.parent / "data"


@cache
def _template(path: str):
    return load_omrchecker_template(DATA / path / "template.json")


def _read_back(path: str, answers: dict[str, str], preset: str, seed: int) -> tuple[dict, dict]:
    t = _template(path)
    sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=seed)
    out = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
    return out, expected_response(t, answers)


def _sample6_answers(seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    return {f.label: f.values[rng.integers(len(f.values))] for f in _template("real-sheets/omrchecker/sample6").fields}


def test_a_block_a_pitch_from_its_neighbour_is_not_read_on_the_neighbours_bubbles():
    # sample6's check letters are two single columns a pitch apart. This scan
    # lies nearly half a pitch aside of the whole-image page: each column,
    # fitted alone within half a pitch, could take either, and check_1 took
    # check_2's, reading its "W" as "H", unflagged.
    answers = _sample6_answers(7)
    out, expected = _read_back("real-sheets/omrchecker/sample6", answers, "scan_mild", 7)
    assert answers["check_1"] == "M" and answers["check_2"] == "W"
    assert out["answers"] == expected, (out["answers"], out["flags"])


def test_a_form_of_a_few_yes_boxes_all_filled_reads_all_yes():
    # community/ibrahimkilic: five one-bubble fields, "no" when empty. With
    # every box filled there is no blank bubble to set the marks against: a
    # solid fill is never taken for one (the blank level is the paper's).
    path = "omrchecker-templates/community/ibrahimkilic"
    for marked in (["q1", "q2", "q3", "q4", "q5"], ["q1", "q2", "q4", "q5"]):
        answers = {q: "yes" for q in marked}
        out, expected = _read_back(path, answers, "scan_mild", 3)
        assert out["answers"] == expected, (marked, out["answers"], out["flags"])
        assert out["needs_review"] is False, out["flags"]
