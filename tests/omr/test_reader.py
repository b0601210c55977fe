"""The reader end to end on sheets drawn from the renderer's raster, one
distortion at a time (the simulator's presets are covered separately)."""

from __future__ import annotations

import io
import json
import random

import cv2
import numpy as np
import pytest
from PIL import Image

from batches.omr import load_template
from batches.omr.reader import read_image_bytes, read_sheet
from tests.omr.reader_sheets import barrel, draw_sheet, jpeg, noise, place, shade

A4 = load_template("a4-100q-5")

ANSWERS = {
    "student_number": "2024051337", "exam_version": "C",
    "q1": "A", "q2": "B", "q3": "C", "q4": "D", "q5": "E", "q13": "B", "q26": "A", "q40": "E",
    "q51": "C", "q63": "D", "q76": "B", "q88": "A", "q99": "E", "q100": "D",
}


def expected(template, answers, page=1):
    from batches.omr.layout import page_layout

    out = {f: "" for f in page_layout(template, page).fields()}
    out.update(answers)
    return out


def random_answers(template, seed, blanks=0.1):
    rng = random.Random(seed)
    from batches.omr.layout import page_layout

    lay = page_layout(template, 1)
    ans = {}
    for g in lay.groups:
        if g.kind == "digit":
            continue
        if rng.random() < blanks:
            continue
        ans[g.field] = rng.choice(g.values)
    ans["student_number"] = "".join(rng.choice("0123456789") for _ in range(10))
    return ans


def assert_read(reading, template, answers):
    d = reading.to_dict()
    assert d["error"] is None, d["error"]
    want = expected(template, answers, d["page"] or 1)
    wrong = {k: (d["answers"].get(k), v) for k, v in want.items() if d["answers"].get(k) != v}
    assert not wrong, wrong
    return d


def doubts(d):
    return {k: v for k, v in d["flags"].items() if set(v) - {"blank"}}


# ---------------------------------------------------------------- plain reading


def test_blank_sheet_reads_all_blank_without_review():
    d = assert_read(read_sheet(draw_sheet(A4, dpi=150), A4), A4, {})
    assert not d["needs_review"] and d["sheet_flags"] == []
    assert all(v == ["blank"] for v in d["flags"].values())
    assert d["qr"]["template"] == "a4-100q-5" and d["orientation"] == 0


def test_filled_sheet_through_jpeg_at_300_dpi():
    answers = random_answers(A4, 1)
    img = draw_sheet(A4, dpi=300, answers=answers)
    (r,) = read_image_bytes(jpeg(img, 80), A4, source="s.jpg")
    d = assert_read(r, A4, answers)
    assert not doubts(d) and not d["needs_review"]
    assert d["file"] == "s.jpg" and d["image_size"] == [2480, 3508]
    assert set(d["timings_ms"]) >= {"decode", "align", "qr", "bubbles", "total"}
    # Coordinates are in the file's pixels although it was decoded at half size.
    tl = d["marks_px"][0]
    assert abs(tl[0] - 141.2) < 2 and abs(tl[1] - 141.2) < 2
    json.dumps(d)


def test_json_shape():
    answers = {"q1": "B", "student_number": "12"}
    d = read_sheet(draw_sheet(A4, dpi=150, answers=answers), A4, source="a.png").to_dict()
    for key in ("file", "template", "page", "qr", "qr_error", "answers", "confidence", "flags", "sheet_flags",
                "needs_review", "error", "timings_ms", "orientation", "bubbles", "marks_px", "homography"):
        assert key in d
    assert set(d["answers"]) == set(d["flags"]) == set(d["confidence"])
    assert list(d["answers"])[:2] == ["student_number", "exam_version"]
    assert all(0.0 <= c <= 1.0 for c in d["confidence"].values())
    b = d["bubbles"][0]
    assert b[:2] == ["student_number[0]", "0"] and isinstance(b[2], float) and isinstance(b[3], bool)
    marked = {(g, v) for g, v, _, m, _, _ in d["bubbles"] if m}
    assert marked == {("q1", "B"), ("student_number[0]", "1"), ("student_number[1]", "2")}


def test_without_template_the_qr_names_it():
    t = load_template("a4-50q-4")
    answers = {"q7": "D", "q50": "A", "exam_version": "B"}
    r = read_sheet(draw_sheet(t, dpi=150, answers=answers), None)
    assert r.template == "a4-50q-4"
    assert_read(r, t, answers)


def test_letter_sheet_without_template():
    t = load_template("letter-20q-4")
    answers = {"q1": "D", "q20": "A", "student_number": "77"}
    r = read_sheet(draw_sheet(t, dpi=150, answers=answers))
    assert r.template == "letter-20q-4"
    assert_read(r, t, answers)


def test_second_page_of_a_two_page_template():
    t = load_template("a4-200q-5")
    answers = {"q101": "B", "q200": "E", "student_number": "55"}
    d = assert_read(read_sheet(draw_sheet(t, page=2, dpi=150, answers=answers), t), t, answers)
    assert d["page"] == 2 and "q1" not in d["answers"]


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("angle", [90, 180, 270, 12, -12, 192, 263])
def test_rotation_and_skew(angle):
    answers = random_answers(A4, angle)
    img = place(draw_sheet(A4, dpi=150, answers=answers), angle=angle)
    d = assert_read(read_sheet(img, A4), A4, answers)
    assert not doubts(d)
    assert d["orientation"] == (round(-angle / 90) * 90) % 360


@pytest.mark.parametrize("scale", [0.85, 1.15])
def test_scale(scale):
    answers = random_answers(A4, 7)
    img = place(draw_sheet(A4, dpi=150, answers=answers), scale=scale, angle=3)
    d = assert_read(read_sheet(img, A4), A4, answers)
    assert not doubts(d)


@pytest.mark.parametrize("dpi", [150, 600])
def test_resolutions(dpi):
    answers = random_answers(A4, dpi)
    img = draw_sheet(A4, dpi=dpi, answers=answers)
    d = assert_read(read_sheet(img, A4), A4, answers)
    assert not doubts(d)


def test_upside_down_without_qr_uses_the_key_bar():
    answers = random_answers(A4, 3)
    img = place(draw_sheet(A4, dpi=150, answers=answers, qr_text=None), angle=180)
    r = read_sheet(img, A4)
    assert r.orientation == 180 and "qr_missing" in r.sheet_flags
    assert_read(r, A4, answers)


def test_phone_photo_perspective_shadow_noise():
    answers = random_answers(A4, 11)
    page = draw_sheet(A4, dpi=200, answers=answers)
    img = place(page, angle=7, perspective=0.06, canvas=(2600, 3400), background=70, scale=0.8)
    img = noise(shade(img, 0.55, seed=2), sigma=6, seed=3)
    d = assert_read(read_sheet(img, A4), A4, answers)
    assert not doubts(d)


def test_lens_distortion_is_absorbed_by_the_outline_fit():
    answers = random_answers(A4, 12)
    img = barrel(place(draw_sheet(A4, dpi=150, answers=answers), angle=2, scale=0.9), k=0.035)
    d = assert_read(read_sheet(img, A4), A4, answers)
    assert not doubts(d)


def test_coloured_paper_and_dark_scanner_lid():
    answers = random_answers(A4, 13)
    page = draw_sheet(A4, dpi=150, answers=answers, paper=200)
    img = place(page, angle=-1.5, canvas=(1400, 1900), background=15)
    d = assert_read(read_sheet(img, A4), A4, answers)
    assert not doubts(d)


def test_a_few_mm_cropped_off_the_edges():
    answers = random_answers(A4, 14)
    page = draw_sheet(A4, dpi=150, answers=answers)
    crop = page[25:-20, 22:-18]  # ~4 mm top, 3 mm bottom, 3.7 / 3 mm sides
    d = assert_read(read_sheet(crop, A4), A4, answers)
    assert not doubts(d)


# ---------------------------------------------------------------- marks


def test_multiple_marks():
    d = read_sheet(draw_sheet(A4, dpi=150, answers={"q5": "BD", "q6": "A"}), A4).to_dict()
    assert d["answers"]["q5"] == "BD" and "multiple" in d["flags"]["q5"]
    assert d["answers"]["q6"] == "A" and d["flags"]["q6"] == []
    assert d["needs_review"]


def test_faint_trace_is_flagged():
    answers = {f"q{i}": "C" for i in range(1, 30)} | {"q40": "B"}
    img = draw_sheet(A4, dpi=150, answers=answers, fills={("q40", "B"): 215})
    d = read_sheet(img, A4).to_dict()
    assert d["needs_review"]
    assert set(d["flags"]["q40"]) & {"faint", "ambiguous", "erasure"}
    assert all(d["answers"][f"q{i}"] == "C" for i in range(1, 30))


def test_light_marker_sheet_reads_against_itself():
    answers = random_answers(A4, 21)
    d = assert_read(read_sheet(draw_sheet(A4, dpi=150, answers=answers, fill=165), A4), A4, answers)
    assert not doubts(d)


def test_erasure_residue_is_flagged():
    img = draw_sheet(A4, dpi=150, answers={"q9": "D", "q10": "A"}, erase={"q9": "A"})
    d = read_sheet(img, A4).to_dict()
    assert d["answers"]["q9"] == "D" and d["needs_review"]
    assert set(d["flags"]["q9"]) & {"erasure", "ambiguous"}
    assert d["flags"]["q10"] == []


def test_digit_grid_short_number_and_gap():
    d = read_sheet(draw_sheet(A4, dpi=150, answers={"student_number": "4711"}), A4).to_dict()
    assert d["answers"]["student_number"] == "4711" and d["flags"]["student_number"] == []
    d = read_sheet(draw_sheet(A4, dpi=150, answers={"student_number": "12 45"}), A4).to_dict()
    assert d["answers"]["student_number"] == "12?45" and "gap" in d["flags"]["student_number"]
    d = read_sheet(draw_sheet(A4, dpi=150, answers={"student_number": ""}), A4).to_dict()
    assert d["answers"]["student_number"] == "" and d["flags"]["student_number"] == ["blank"]


def test_two_marks_in_a_digit_column():
    img = draw_sheet(A4, dpi=150, answers={"student_number": "123"})
    img2 = draw_sheet(A4, dpi=150, answers={"student_number": "173"})
    both = np.minimum(img, img2)  # column 2 holds a 2 and a 7
    d = read_sheet(both, A4).to_dict()
    assert d["answers"]["student_number"] == "1?3" and "multiple" in d["flags"]["student_number"]


# ---------------------------------------------------------------- QR and template


def test_qr_naming_another_template():
    t50 = load_template("a4-50q-5")
    answers = {"q3": "B"}
    r = read_sheet(draw_sheet(t50, dpi=150, answers=answers), A4)
    assert "wrong_template" in r.sheet_flags and r.needs_review
    assert r.template == "a4-50q-5"  # read as what it is, and said so
    assert r.answers["q3"] == "B"


def test_qr_missing_still_reads_with_the_given_template():
    answers = random_answers(A4, 31)
    r = read_sheet(draw_sheet(A4, dpi=150, answers=answers, qr_text=None), A4)
    assert r.sheet_flags == ["qr_missing"] and r.needs_review and r.qr is None
    assert_read(r, A4, answers)


def test_qr_missing_without_template_is_an_error():
    r = read_sheet(draw_sheet(A4, dpi=150, qr_text=None))
    assert r.error and "qr_missing" in r.sheet_flags and r.answers == {}


def test_foreign_qr():
    r = read_sheet(draw_sheet(A4, dpi=150, answers={"q1": "A"}, qr_text="https://example.com/menu"), A4)
    assert "qr_foreign" in r.sheet_flags and "example.com" in r.qr_error
    assert r.answers["q1"] == "A"


def test_damaged_qr_text():
    r = read_sheet(draw_sheet(A4, dpi=150, qr_text="OMR1;t=a4-100q-5;p=x"), A4)
    assert "qr_damaged" in r.sheet_flags


def test_unknown_template_in_qr():
    r = read_sheet(draw_sheet(A4, dpi=150, qr_text="OMR1;t=nonexistent-sheet;p=1"))
    assert r.error and "unknown_template" in r.sheet_flags


def test_letter_sheet_read_with_an_a4_template_is_refused():
    letter = load_template("letter-100q-5")
    img = draw_sheet(letter, dpi=150, answers=random_answers(letter, 5), qr_text=None)
    d = read_sheet(img, A4).to_dict()
    assert d["needs_review"] and d["error"]
    assert {"wrong_template", "not_a_sheet", "misaligned"} & set(d["sheet_flags"])
    assert not d["answers"]


def test_other_layout_same_marks_without_qr_is_refused():
    t20 = load_template("a4-20q-4")
    img = draw_sheet(t20, dpi=150, answers={"q1": "A"}, qr_text=None)
    d = read_sheet(img, A4).to_dict()
    assert d["needs_review"] and d["error"] and not d["answers"]


# ---------------------------------------------------------------- not sheets


def test_noise_image():
    img = (np.random.default_rng(0).random((1600, 1200)) * 255).astype(np.uint8)
    d = read_sheet(img, A4).to_dict()
    assert d["error"] and {"not_a_sheet", "unreadable"} & set(d["sheet_flags"]) and not d["answers"]


def test_photo_of_nothing():
    rng = np.random.default_rng(1)
    img = np.full((1500, 2000, 3), 120, np.uint8)
    for _ in range(60):  # clutter: boxes and blobs of any colour, some square and dark
        x, y = rng.integers(0, 1900), rng.integers(0, 1400)
        s = int(rng.integers(10, 120))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + s, y + s), colour, -1)
        else:
            cv2.circle(img, (x, y), s // 2, colour, -1)
    d = read_sheet(img).to_dict()
    assert d["error"] and {"not_a_sheet", "unreadable"} & set(d["sheet_flags"]) and not d["answers"]


def test_uniform_image():
    d = read_sheet(np.full((800, 600), 255, np.uint8), A4).to_dict()
    assert d["error"] and "unreadable" in d["sheet_flags"]


def test_multi_page_tiff_gives_one_reading_per_page():
    t = load_template("a4-200q-4")
    frames = [Image.fromarray(draw_sheet(t, page=p, dpi=150, answers={f"q{100 * (p - 1) + 5}": "C"}))
              for p in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    readings = read_image_bytes(out.getvalue(), None, source="batch.tif")
    assert [r.page for r in readings] == [1, 2]
    assert readings[0].answers["q5"] == "C" and readings[1].answers["q105"] == "C"
    assert [r.file for r in readings] == ["batch.tif#1", "batch.tif#2"]


def test_two_page_template_without_qr_says_the_page_is_unknown():
    t = load_template("a4-200q-5")
    r = read_sheet(draw_sheet(t, page=2, dpi=150, answers={"q105": "C"}, qr_text=None), t)
    # Both pages print the same bubbles: nothing on the sheet tells them apart.
    assert "page_unknown" in r.sheet_flags and r.needs_review
    r = read_sheet(draw_sheet(t, page=2, dpi=150, answers={"q105": "C"}, qr_text=None), t, page=2)
    assert r.page == 2 and r.answers["q105"] == "C" and "page_unknown" not in r.sheet_flags


@pytest.mark.parametrize("sheet,template", [("a4-100q-5", "a4-100q-4"), ("a4-100q-4", "a4-100q-5")])
def test_options_per_question_must_match(sheet, template):
    # Same marks, same rows: only the count of options differs. A 5-option
    # sheet fits a 4-option template's bubbles perfectly, so the rows running
    # on are what gives it away (marks on E would be lost silently otherwise).
    ts, tt = load_template(sheet), load_template(template)
    img = place(draw_sheet(ts, dpi=150, answers=random_answers(ts, 3), qr_text=None), angle=3)
    d = read_sheet(img, tt).to_dict()
    assert d["error"] and "wrong_template" in d["sheet_flags"] and not d["answers"]
