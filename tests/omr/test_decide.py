"""The decision stage both kinds of template share (``batches/omr/decide.py``):
what real paper shows and the simulator draws only in part, drawn on simulated
sheets. Each of these read wrong or flagged needlessly before the rules they
pin."""

from __future__ import annotations

import dataclasses
import random

import cv2
import numpy as np
import pytest

from batches.omr import load_template
from batches.omr.omrchecker import read_omrchecker_image_bytes
from batches.omr.omrchecker.render import expected_response, simulate_omrchecker_sheet
from batches.omr.reader import read_image_bytes
from batches.omr.synthetic import simulate
from batches.omr.synthetic.simulate import PRESETS
from tests.omr.test_omrchecker import marker_template

A4 = load_template("a4-100q-5")
#: A clean scan with nothing on it but the answers (no erased answers, no strays).
QUIET = dataclasses.replace(PRESETS["clean"], erasure_rate=0.0, stray_marks=0)


def _sheet(seed: int):
    answers = simulate.random_answers(A4, 1, random.Random(seed), blank_rate=0.0, multiple_rate=0.0)
    sim = simulate.simulate_sheet(A4, answers, page=1, seed=seed, preset=QUIET)
    (first,) = read_image_bytes(sim.encode_jpeg(), A4)
    return sim, first.to_dict()


def _read(image: np.ndarray) -> dict:
    ok, data = cv2.imencode(".png", image)
    assert ok
    (reading,) = read_image_bytes(data.tobytes(), A4)
    return reading.to_dict()


def _bubbles_of(reading: dict) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for group, value, _score, _marked, x, y in reading["bubbles"]:
        out.setdefault(group, {})[value] = (x, y)
    return out


def test_a_band_printed_under_one_column_of_an_omrchecker_sheet_reads_clean():
    # OMRChecker's own first sample prints a grey band under one digit column:
    # a column lifted as a whole is no erased answer in each of its bubbles.
    t = marker_template()
    rng = np.random.default_rng(8)
    answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields}
    sim = simulate_omrchecker_sheet(t, answers, preset=QUIET, seed=8)
    first = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
    assert first["needs_review"] is False
    xy = np.array([(x, y) for group, _v, _s, _m, x, y in first["bubbles"] if group == "q5_1"])
    pitch = float(np.diff(np.sort(xy[:, 1])).min())
    x0, y0 = (xy.min(0) - 0.45 * pitch).astype(int)
    x1, y1 = (xy.max(0) + 0.45 * pitch).astype(int)
    image = sim.image.astype(np.float32)
    image[y0:y1, x0:x1] *= 0.9
    ok, data = cv2.imencode(".png", np.clip(image, 0, 255).astype(np.uint8))
    out = read_omrchecker_image_bytes(data.tobytes(), t)[0].to_dict()
    assert out["answers"] == expected_response(t, answers)
    assert out["needs_review"] is False, {k: v for k, v in out["flags"].items() if v}


def test_a_pen_dot_beside_an_answer_is_no_second_answer_and_no_doubt():
    # The pen's tip set down in another bubble of an answered question: a few
    # dark pixels, far too little ink for a tick.
    sim, first = _sheet(6)
    where = _bubbles_of(first)
    image = sim.image.copy()
    dotted = []
    for q in range(1, 101, 10):
        field = f"q{q}"
        answer = sim.truth["answers"][field]
        other = next(v for v in "ABCDE" if v not in answer)
        xy = np.array(list(where[field].values()))
        r = 0.5 * float(np.diff(np.sort(xy[:, 0])).min()) * 0.5
        x, y = where[field][other]
        cv2.circle(image, (int(round(x)), int(round(y))), max(2, int(round(0.25 * r))), (40, 40, 40), -1,
                   cv2.LINE_AA)
        dotted.append(field)
    out = _read(image)
    assert {q: out["answers"][q] for q in dotted} == {q: sim.truth["answers"][q] for q in dotted}
    assert {q: out["flags"][q] for q in dotted if out["flags"][q]} == {}


def test_omrchecker_sheets_read_a_dash_across_two_bubbles_as_the_engine_does():
    # OMRChecker sheets go through the engine's decisions: a dash drawn
    # through one bubble into the next reads as the one it crosses.
    t = marker_template()
    rng = np.random.default_rng(3)
    answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields}
    sim = simulate_omrchecker_sheet(t, answers, preset="clean", seed=3, style="across")
    out = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
    expected = expected_response(t, answers)
    right = sum(out["answers"][k] == v for k, v in expected.items())
    assert right >= len(expected) - 1, {k: (out["answers"][k], v) for k, v in expected.items()
                                        if out["answers"][k] != v}
    for k, v in expected.items():
        assert out["answers"][k] == v or out["flags"][k], (k, out["answers"][k], v)


def test_a_light_scribble_in_a_group_lying_at_the_blank_level_is_flagged_not_read_blank_silently():
    # A rough 150-dpi scan of real paper: one answer is a light pencil
    # scribble (q79 D, 0.09 over its blank level, just under the grey zone,
    # too few dark pixels for a stroke). Its group lies within the noise of
    # the blank level, so the scribble is residue to flag, not a band lifting
    # the group: read blank, it must be flagged, never passed as blank.
    rng = random.Random(56 * 100_003)
    answers = simulate.random_answers(A4, 1, rng)
    sim = simulate.simulate_sheet(A4, answers, page=1, seed=56 * 100_003, preset="scan_hard", style="paper")
    assert sim.truth["answers"]["q79"] == "D" and sim.truth["styles"]["q79"] == "scribble"
    (first,) = read_image_bytes(sim.encode_jpeg(), A4)
    out = first.to_dict()
    assert out["answers"]["q79"] == "D" or set(out["flags"]["q79"]) - {"blank"}, out["flags"]["q79"]


@pytest.mark.parametrize("preset", ["clean", "scan_mild", "scan_letters", "scan_bitonal"])
def test_a_table_frame_round_blocks_is_no_circle_drawn_round_their_bubbles(preset):
    # sample6 prints its roll number and check letters in a table: the
    # frame runs past each block's edge bubbles where a drawn circle would,
    # round a corner bubble on two sides. Drawn so (``frame``), no bubble
    # reads circled: the frame's straight lines are left out of the ring
    # (``grid.printed_lines``).
    from pathlib import Path

    from batches.omr.omrchecker import load_omrchecker_template
    from batches.omr.omrchecker.render import expected_response

    t = load_omrchecker_template(Path(__file__).parents[1] / "data/real-sheets/omrchecker/sample6/template.json")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields}
        sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=seed, frame=True)
        out = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
        assert out["answers"] == expected_response(t, answers), seed
        assert not any("circled" in flags for flags in out["flags"].values()), (seed, out["flags"])


def test_an_answer_circled_by_a_ring_left_open_is_read_circled_not_blank():
    # A hand's ring round the chosen bubble often covers two thirds of its
    # free directions, under what a drawn circle needs; in a group with
    # nothing else marked it stands out, and a person reads the answer.
    from batches.omr import page_layout
    from batches.omr.synthetic import accuracy

    bubbles = len(page_layout(A4, 1).bubbles)
    digits = [b.name for b in A4.digit_grids]
    silent = []
    for preset, seed in (("photo_hard", 12), ("scan_hard", 10)):
        for i in range(2):
            s = seed * 100_003 + i
            answers = simulate.random_answers(A4, 1, random.Random(s))
            sim = simulate.simulate_sheet(A4, answers, page=1, seed=s, preset=preset, style="circled")
            (reading,) = read_image_bytes(sim.encode_jpeg(), A4)
            silent += accuracy.score_sheet(reading.to_dict(), sim.truth, bubbles, digits).silent
    t = marker_template()
    for preset, seed, i in (("clean", 7, 1), ("scan_hard", 10, 0), ("scan_hard", 10, 1), ("photo_mild", 11, 1)):
        rng = np.random.default_rng(seed * 1000 + i)
        answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields if rng.random() > 0.1}
        sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=seed * 1000 + i, style="circled")
        out = read_omrchecker_image_bytes(sim.encode_jpeg(), t)[0].to_dict()
        for col, value in expected_response(t, answers).items():
            if out["answers"][col] != value and not (set(out["flags"][col]) - {"blank"}) and not out["sheet_flags"]:
                silent.append(f"{preset}#{i} {col}: read {out['answers'][col]!r}, truth {value!r}")
    assert silent == []
