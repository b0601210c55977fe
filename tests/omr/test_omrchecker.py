"""OMRChecker templates: import (field types, ranges, custom labels, options
reported by name), and sheets drawn for them, put through the simulator's
scanner and phone distortions, read back with each alignment method."""

import dataclasses
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from batches.omr.omrchecker import (
    OmrCheckerTemplate,
    OmrCheckerTemplateError,
    load_omrchecker_template,
    read_omrchecker_image_bytes,
    read_omrchecker_sheet,
)
from batches.omr.omrchecker import locate as omrc_locate
from batches.omr.omrchecker.render import expected_response, marker_image, render_sheet, simulate_omrchecker_sheet
from batches.omr.omrchecker.steps import ecc_to_reference, fit_on_grid, rect_h
from batches.omr.synthetic.simulate import PRESETS

ROOT = Path(__file__).resolve().parents[2]


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


#: A sheet like OMRChecker's sample 1: a roll number of a medium choice and
#: nine integer columns joined by a custom label, a two-digit integer answer,
#: MCQ4 and MCQ5 blocks, corner markers.
MARKER_TEMPLATE = {
    "pageDimensions": [1846, 1500],
    "bubbleDimensions": [40, 40],
    "customLabels": {"Roll": ["Medium", "roll1..9"], "q5": ["q5_1", "q5_2"]},
    "fieldBlocks": {
        "Medium": {"bubblesGap": 41, "bubbleValues": ["E", "H"], "direction": "vertical",
                   "fieldLabels": ["Medium"], "labelsGap": 0, "origin": [170, 282]},
        "Roll": {"fieldType": "QTYPE_INT", "fieldLabels": ["roll1..9"], "bubblesGap": 46, "labelsGap": 58,
                 "origin": [225, 282]},
        "Int_Q5": {"fieldType": "QTYPE_INT", "fieldLabels": ["q5_1", "q5_2"], "bubblesGap": 46, "labelsGap": 60,
                   "origin": [903, 282]},
        "Mcq1": {"fieldType": "QTYPE_MCQ4", "fieldLabels": ["q1..4"], "bubblesGap": 59, "labelsGap": 50,
                 "origin": [121, 860]},
        "Mcq2": {"fieldType": "QTYPE_MCQ5", "fieldLabels": ["q6..13"], "bubblesGap": 59, "labelsGap": 50,
                 "origin": [905, 860]},
    },
    "preProcessors": [{"name": "CropOnMarkers",
                       "options": {"relativePath": "omr_marker.jpg", "sheetToMarkerWidthRatio": 17}}],
}

#: A portrait sheet with room for instructions: a roll number counted from 1,
#: values printed right to left, an empty value of "-".
PAGE_TEMPLATE = {
    "pageDimensions": [1200, 1600],
    "bubbleDimensions": [32, 32],
    "emptyValue": "-",
    "customLabels": {"Roll": ["roll1..6"]},
    "fieldBlocks": {
        "Roll": {"fieldType": "QTYPE_INT_FROM_1", "fieldLabels": ["roll1..6"], "bubblesGap": 40, "labelsGap": 42,
                 "origin": [100, 330]},
        "Rtl": {"bubbleValues": ["E", "D", "C", "B", "A"], "direction": "horizontal", "fieldLabels": ["r1..5"],
                "bubblesGap": 45, "labelsGap": 45, "origin": [600, 330], "emptyValue": ""},
        "Mcq": {"fieldType": "QTYPE_MCQ4", "fieldLabels": ["q1..20"], "bubblesGap": 48, "labelsGap": 40,
                "origin": [150, 760]},
        "Mcq2": {"fieldType": "QTYPE_MCQ5", "fieldLabels": ["q21..40"], "bubblesGap": 48, "labelsGap": 40,
                 "origin": [650, 760]},
    },
    "preProcessors": [{"name": "CropPage", "options": {"morphKernel": [10, 10]}}],
}


@cache
def marker_template() -> OmrCheckerTemplate:
    return load_omrchecker_template(json.dumps(MARKER_TEMPLATE), png(marker_image()))


@cache
def page_template(kind: str = "CropPage") -> OmrCheckerTemplate:
    tpl = json.loads(json.dumps(PAGE_TEMPLATE))
    images = {}
    if kind == "none":
        tpl["preProcessors"] = []
    elif kind == "filters":
        tpl["preProcessors"] = [{"name": "CropPage", "options": {}},
                                {"name": "GaussianBlur", "options": {"kSize": [3, 3], "sigmaX": 0}},
                                {"name": "MedianBlur", "options": {"kSize": 5}},
                                {"name": "Levels", "options": {"low": 0.1, "high": 0.9, "gamma": 0.8}}]
    elif kind == "features":
        blank, _ = render_sheet(page_template("none"), 100)
        images["reference.png"] = png(blank)
        tpl["preProcessors"] = [{"name": "FeatureBasedAlignment", "options": {"reference": "reference.png"}}]
    return load_omrchecker_template(tpl, images=images)


def some_answers(t: OmrCheckerTemplate, seed: int = 1, blank_rate: float = 0.1) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    return {f.label: f.values[rng.integers(len(f.values))] for f in t.fields if rng.random() >= blank_rate}


def read_back(t, answers, preset, seed=0, **kw):
    sim = simulate_omrchecker_sheet(t, answers, preset=preset, seed=seed, **kw)
    return read_omrchecker_image_bytes(sim.encode_jpeg(), t, source=f"{preset}-{seed}.jpg")[0].to_dict()


def assert_right_or_flagged(out, expected, *, must_read=True):
    """Every answer right, or (on the hard end) wrong only where it is flagged."""
    if must_read:
        assert out["error"] is None, out["error"]
        assert out["answers"] == expected
        return
    if out["error"]:
        assert out["sheet_flags"] and out["answers"] == {}
        return
    for col, value in expected.items():
        if out["answers"][col] != value:
            assert out["sheet_flags"] or set(out["flags"][col]) - {"blank"}, (col, out["answers"][col], value)


# ---------------------------------------------------------------- import


def test_field_types_ranges_and_bubble_positions_follow_omrchecker():
    t = marker_template()
    by = {f.label: f for f in t.fields}
    assert [f"roll{n}" for n in range(1, 10)] == [f.label for f in t.fields if f.block == "Roll"]
    # QTYPE_INT: 0..9 down the column (bubblesGap), columns labelsGap apart.
    roll3 = by["roll3"]
    assert roll3.values == tuple("0123456789")
    assert roll3.boxes[0] == (225 + 2 * 58, 282) and roll3.boxes[4] == (225 + 2 * 58, 282 + 4 * 46)
    # QTYPE_MCQ4: A..D along the row, rows labelsGap apart.
    q3 = by["q3"]
    assert q3.values == ("A", "B", "C", "D") and q3.direction == "horizontal"
    assert q3.boxes == tuple((121 + i * 59, 860 + 2 * 50) for i in range(4))
    assert by["q13"].values == tuple("ABCDE")
    assert by["Medium"].values == ("E", "H") and by["Medium"].boxes == ((170, 282), (170, 323))
    assert page_template().fields[0].values == tuple("1234567890")  # QTYPE_INT_FROM_1


def test_custom_labels_output_columns_and_empty_values():
    t = marker_template()
    assert t.custom_labels["Roll"] == ["Medium"] + [f"roll{n}" for n in range(1, 10)]
    # OMRChecker's natural sort of custom labels and the fields they leave.
    assert t.output_columns == ["Roll", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11",
                                "q12", "q13"]
    p = page_template()
    empties = {f.label: f.empty_value for f in p.fields}
    assert empties["q1"] == "-" and empties["r1"] == ""
    tpl = dict(PAGE_TEMPLATE, outputColumns=["q2", "Roll", "q1"])
    assert load_omrchecker_template(tpl).output_columns == ["q2", "Roll", "q1"]
    gaps = json.loads(json.dumps(PAGE_TEMPLATE))
    gaps["fieldBlocks"]["Roll"]["labelsGap"] = [40, 40, 60, 40, 40]
    xs = [f.boxes[0][0] for f in load_omrchecker_template(gaps).fields if f.block == "Roll"]
    assert xs == [100, 140, 180, 240, 280, 320]


def test_unsupported_options_are_reported_by_name():
    tpl = json.loads(json.dumps(PAGE_TEMPLATE))
    tpl["preProcessors"] = [{"name": "CropPage", "options": {"morphKernel": [10, 10], "colour": "red"}},
                            {"name": "CropOnLogo", "options": {"relativePath": "logo.png"}}]
    tpl["fieldBlocks"]["Mcq"]["fieldType"] = "QTYPE_MCQ6"
    tpl["sortFiles"] = True
    with pytest.raises(OmrCheckerTemplateError) as exc:
        load_omrchecker_template(tpl)
    errors = "\n".join(exc.value.errors)
    assert "preProcessors[0].options.colour: not supported for CropPage" in errors
    assert "preProcessors[1].name: 'CropOnLogo' is not supported" in errors
    assert "fieldBlocks.Mcq.fieldType: 'QTYPE_MCQ6' is not supported" in errors
    assert "sortFiles: not supported" in errors
    # Tuning options are accepted but named, never dropped silently.
    notes = "\n".join(page_template().notes)
    assert "CropPage.morphKernel: accepted without effect" in notes


def test_missing_images_overflow_and_the_old_format_are_errors():
    with pytest.raises(OmrCheckerTemplateError, match="marker image 'omr_marker.jpg' was not given"):
        load_omrchecker_template(MARKER_TEMPLATE)
    over = json.loads(json.dumps(PAGE_TEMPLATE))
    over["fieldBlocks"]["Mcq2"]["origin"] = [1100, 760]
    with pytest.raises(OmrCheckerTemplateError, match="Mcq2: overflows"):
        load_omrchecker_template(over)
    with pytest.raises(OmrCheckerTemplateError, match="pre-1.0 OMRChecker format"):
        load_omrchecker_template({"Dimensions": [300, 400], "QBlocks": {}})


def test_config_json_and_files_beside_the_template(tmp_path):
    (tmp_path / "template.json").write_text(json.dumps(MARKER_TEMPLATE))
    (tmp_path / "omr_marker.jpg").write_bytes(png(marker_image()))
    (tmp_path / "config.json").write_text(json.dumps({
        "dimensions": {"processing_width": 800, "processing_height": 1000, "display_width": 1640},
        "threshold_params": {"MIN_JUMP": 30}}))
    t = load_omrchecker_template(tmp_path / "template.json")
    assert t.name == tmp_path.name and t.processing == (800, 1000)
    assert "omr_marker.jpg" in t.images
    assert any(n.startswith("config.json threshold_params: not used") for n in t.notes)


def test_serialises_for_storage_and_reads_the_same():
    t = marker_template()
    stored = json.loads(json.dumps(t.to_dict()))
    again = OmrCheckerTemplate.from_dict(stored)
    assert again.fields == t.fields and again.steps == t.steps and again.output_columns == t.output_columns
    assert np.array_equal(again.images["omr_marker.jpg"], t.images["omr_marker.jpg"])


# ---------------------------------------------------------------- reading


def test_markers_sheet_reads_right_on_scans_and_a_phone_photo():
    t = marker_template()
    answers = some_answers(t)
    answers["q2"] = "AC"  # a double mark: OMRChecker concatenates in bubble order
    expected = expected_response(t, answers)
    assert expected["q2"] == "AC"
    for preset in ("clean", "scan_mild", "photo_mild"):
        out = read_back(t, answers, preset)
        assert out["alignment"].startswith(("CropOnMarkers", "page outline"))
        assert_right_or_flagged(out, expected)
        assert "multiple" in out["flags"]["q2"]
        assert out["fields"]["q5_1"] == answers.get("q5_1", "")


def test_roll_number_custom_label_concatenates_columns():
    t = marker_template()
    answers = {"Medium": "H", **{f"roll{n}": str((n * 7) % 10) for n in range(1, 10)}, "q5_1": "4", "q5_2": "2"}
    out = read_back(t, answers, "scan_mild", seed=3)
    assert out["answers"]["Roll"] == "H" + "".join(str((n * 7) % 10) for n in range(1, 10))
    assert out["answers"]["q5"] == "42"
    assert out["answers"]["q1"] == ""  # the template's empty value


def test_crop_page_sheet_reads_on_scan_and_photos():
    t = page_template()
    answers = some_answers(t, seed=2)
    answers["r2"] = "E"  # right-to-left values
    expected = expected_response(t, answers)
    for preset, seed in (("scan_mild", 0), ("photo_mild", 1), ("photo_mild", 2)):
        out = read_back(t, answers, preset, seed)
        assert_right_or_flagged(out, expected)
    assert expected["q1"] in ("-", *"ABCD")


def test_feature_based_alignment_finds_the_reference():
    t = page_template("features")
    ref = t.images["reference.png"]
    w, h = ref.shape[1], ref.shape[0]
    # A scan of the sheet at another resolution, turned 1.5 degrees and shifted.
    a = np.radians(1.5)
    turn = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = (np.array([[0, 0], [w, 0], [w, h], [0, h]]) * 1.45) @ turn.T + [30, 20]
    hi, _ = render_sheet(page_template("none"), 150)
    S = np.diag([w / hi.shape[1], h / hi.shape[0], 1.0])
    image = cv2.warpPerspective(hi, rect_h(w, h, quad) @ S, (1000, 1330), borderValue=235)
    H = ecc_to_reference(image, np.diag([image.shape[1] / w, image.shape[0] / h, 1.0]), ref)
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]]).T
    got = (H @ corners).T
    assert np.abs(got[:, :2] / got[:, 2:] - quad).max() < 5
    answers = some_answers(t, seed=4)
    out = read_back(t, answers, "clean", seed=2)
    assert out["alignment"] == "FeatureBasedAlignment"
    assert_right_or_flagged(out, expected_response(t, answers))
    # A harder scan: read through the reference, or through the page outline
    # when the reference does not hold.
    out = read_back(t, answers, "scan_mild", seed=2)
    assert out["alignment"] in ("FeatureBasedAlignment",
                                "page outline + instead of FeatureBasedAlignment (page outline first)")
    assert_right_or_flagged(out, expected_response(t, answers))


def test_printed_bubbles_larger_or_smaller_than_the_template_boxes():
    # Template boxes are drawn by hand around the printed bubbles: the reader
    # measures the real outline, it does not take the box for it.
    t = page_template()
    answers = some_answers(t, seed=9)
    for share, preset in ((1.25, "scan_mild"), (0.6, "photo_mild")):
        out = read_back(t, answers, preset, seed=2, circle_share=share)
        assert_right_or_flagged(out, expected_response(t, answers))


@pytest.mark.parametrize("shape", ["square", "oval"])
def test_bubbles_printed_as_squares_or_ovals(shape):
    # Forms other than OMRChecker's print boxes or ovals: the outline evidence
    # is a ring, and still finds them; a fill reads as in a circle.
    t = marker_template()
    answers = some_answers(t, seed=11)
    for preset, seed in (("scan_mild", 3), ("photo_mild", 4)):
        # (No erased earlier answers nor stray marks: nothing to flag on these.)
        quiet = dataclasses.replace(PRESETS[preset], erasure_rate=0.0, stray_marks=0)
        out = read_back(t, answers, quiet, seed=seed, shape=shape)
        assert "CropOnMarkers" in out["alignment"], out["alignment"]
        assert_right_or_flagged(out, expected_response(t, answers))
        assert not out["needs_review"], (preset, out["sheet_flags"], {k: v for k, v in out["flags"].items() if v})
    with pytest.raises(ValueError, match="unknown bubble shape"):
        read_back(t, answers, "clean", shape="hexagon")


def test_a_scan_framed_to_the_page_and_fed_at_a_slant_is_turned_back():
    # No page-finding step: the image is the page. A feeder that skews the
    # page and frames the image to it leaves no edge to find.
    t = page_template("none")
    answers = some_answers(t, seed=5)
    for seed in (1, 2):
        opts = dataclasses.replace(PRESETS["scan_mild"], framed_to_page=True, skew_deg=(2.0, 3.0), lid_grey=252,
                                   erasure_rate=0.0)
        out = read_back(t, answers, opts, seed=seed)
        assert "turned" in out["alignment"], out["alignment"]
        assert_right_or_flagged(out, expected_response(t, answers))


def test_filters_and_no_preprocessors():
    answers = some_answers(page_template(), seed=5)
    for kind, preset in (("filters", "photo_mild"), ("none", "clean")):
        t = page_template(kind)
        out = read_back(t, answers, preset, seed=1)
        assert_right_or_flagged(out, expected_response(t, answers))
    assert out["alignment"] == "whole image"


def test_unfilled_sheet_reads_all_blank_without_review():
    t = page_template()
    for preset in ("scan_mild", "photo_mild"):
        # Nothing on the sheet at all: no erased earlier answers, no stray marks.
        quiet = dataclasses.replace(PRESETS[preset], erasure_rate=0.0, stray_marks=0)
        out = read_back(t, {}, quiet, seed=4)
        assert out["error"] is None
        assert out["answers"] == expected_response(t, {})
        assert all(flags == ["blank"] for flags in out["flags"].values()), out["flags"]
        assert out["needs_review"] is False


def test_faint_circled_and_double_marks_are_flagged():
    t = page_template()
    answers = {"q1": "B", "q2": "C", "q3": "A", "q4": "BD", "q5": "A"}
    style = {"q1": "light", "q2": "circled", "q3": "filled", "q4": "filled", "q5": "filled"}
    out = read_back(t, answers, "clean", seed=1, style=style)
    assert out["answers"]["q3"] == "A" and out["flags"]["q3"] == []
    assert out["answers"]["q4"] == "BD" and "multiple" in out["flags"]["q4"]
    assert out["answers"]["q2"] == "C" and "circled" in out["flags"]["q2"]
    assert out["answers"]["q1"] in ("B", "-") and set(out["flags"]["q1"]) & {"faint", "ambiguous", "erasure"}
    assert out["needs_review"] is True


def test_ticks_and_half_fills_read_as_marks_flagged_and_a_dash_across_two_bubbles_reads_one():
    # A tick or a half fill leaves a bubble's mean light but holds dark
    # pixels (the stroke rule both readers share): read as the answer, with a
    # flag. A dash drawn through one bubble into the next reads the one.
    t = marker_template()
    answers = some_answers(t, seed=3)
    expected = expected_response(t, answers)
    for style in ("tick", "half", "across"):
        out = read_back(t, answers, "scan_mild", seed=2, style=style)
        assert_right_or_flagged(out, expected, must_read=False)
        right = [c for c, v in expected.items() if out["answers"][c] == v]
        assert len(right) >= 0.85 * len(expected), (style, out["answers"], expected)
        if style != "across":
            blank = expected_response(t, {})
            marked = [c for c in right if expected[c] != blank[c]]
            assert marked and all("faint" in out["flags"][c] for c in marked), out["flags"]


def test_hard_photos_are_read_or_flagged_never_silently_wrong():
    t = marker_template()
    answers = some_answers(t, seed=6)
    expected = expected_response(t, answers)
    for seed in (0, 1):
        out = read_back(t, answers, "photo_hard", seed)
        assert_right_or_flagged(out, expected, must_read=False)


#: A school's 10-question sheet with a 3-digit roll number, found by its page outline.
SCHOOL_TEMPLATE = {
    "pageDimensions": [1000, 1200], "bubbleDimensions": [32, 32],
    "fieldBlocks": {
        "MCQ": {"fieldType": "QTYPE_MCQ4", "origin": [120, 400], "fieldLabels": ["q1..10"], "bubblesGap": 56,
                "labelsGap": 56},
        "Roll": {"fieldType": "QTYPE_INT", "origin": [600, 400], "fieldLabels": ["r1..3"], "bubblesGap": 50,
                 "labelsGap": 56}},
    "customLabels": {"Roll": ["r1..3"]},
    "preProcessors": [{"name": "CropPage", "options": {}}],
}


def on_a_desk(page: np.ndarray, *, paper: float, page_gain: float = 0.92, desk: float = 118, seed: int = 0):
    """A photo-like image of ``page`` (grey, the whole printed sheet) lying on a
    grey desk, partly on a near-white paper (grey ``paper``) that runs under its
    left and top edges, lit unevenly (darker to the right), mildly in
    perspective. Returns (image, homography page image px -> image px)."""
    rng = np.random.default_rng(seed)
    h, w = page.shape
    W, H = int(w * 1.5), int(h * 1.4)
    canvas = np.full((H, W), desk, np.float32)
    ox, oy = 0.25 * w, 0.2 * h
    cv2.rectangle(canvas, (0, 0), (int(ox + 0.4 * w), int(oy + 0.8 * h)), paper, -1)
    quad = np.float32([[ox, oy], [ox + w, oy], [ox + w, oy + h], [ox, oy + h]])
    quad += (rng.uniform(-0.03, 0.03, (4, 2)) * [w, h]).astype(np.float32)
    M = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), quad)
    lit = page.astype(np.float32) * page_gain * (1.0 - 0.2 * np.linspace(0, 1, w)[None, :] ** 2)
    warped = cv2.warpPerspective(lit, M, (W, H), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones((h, w), np.float32), M, (W, H), flags=cv2.INTER_LINEAR)
    out = canvas * (1 - mask) + warped * mask
    out = cv2.GaussianBlur(out, (0, 0), 0.8) + rng.normal(0, 2.0, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8), M.astype(np.float64)


def jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def test_page_partly_on_a_white_paper_reads_right(monkeypatch):
    t = load_omrchecker_template(SCHOOL_TEMPLATE, name="school-10q")
    answers = {f"q{j}": "ABCD"[j % 4] for j in range(1, 11)} | {"r1": "7", "r2": "0", "r3": "6"}
    expected = expected_response(t, answers)
    sim = simulate_omrchecker_sheet(t, answers, preset="clean", seed=0)
    page = cv2.cvtColor(sim.image, cv2.COLOR_BGR2GRAY)
    # A bright photo: page and the paper behind it both over OMRChecker's
    # truncation level, 20 grey levels apart.
    image, M = on_a_desk(page, paper=215)
    out = read_omrchecker_image_bytes(jpeg(image), t)[0].to_dict()
    assert out["error"] is None, out["error"]
    assert out["answers"] == expected
    # The page outline found short along one side (its bottom-right corner
    # most of a bubble pitch in, as in a photo where the page meets a white
    # paper in a shadow): still read right, each block fitted within half a
    # pitch of where the outline puts it, or the grid fitted on the printed
    # outlines.
    true_h = M @ np.diag([page.shape[1] / t.page_w, page.shape[0] / t.page_h, 1.0])  # template px -> image px
    corners = np.array([[0, 0], [t.page_w, 0], [t.page_w, t.page_h], [0, t.page_h]], np.float64)
    quad = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), true_h).reshape(4, 2)
    quad[2] -= [70.0, 0.0]  # a pitch is ~83 px here
    grey = cv2.imdecode(np.frombuffer(jpeg(image), np.uint8), cv2.IMREAD_GRAYSCALE)
    # The only outlines the page search finds are that one (in the
    # processing image's px, where the search runs).
    f = omrc_locate.processing_image(grey, t)[2]
    off = (quad + 0.5) * f - 0.5
    monkeypatch.setattr(omrc_locate, "omrchecker_outline", lambda work, t: off)
    monkeypatch.setattr(omrc_locate, "quick_outlines", lambda work: iter([off]))
    monkeypatch.setattr(omrc_locate, "page_candidates", lambda work, limit=1: [(off, [])])
    out = read_omrchecker_sheet(grey, t).to_dict()
    assert out["error"] is None, out["error"]
    # Blocks are fitted within half a pitch of where the outline puts them,
    # and the grid on the printed outlines when that is not enough.
    assert out["alignment"] in ("CropPage", "CropPage + bubble grid")
    assert out["answers"] == expected
    centres = np.array([c for f in t.fields for c in f.centres()], np.float64)
    fitted, n, _radius = fit_on_grid(grey, rect_h(t.page_w, t.page_h, quad), centres, 16.0, 50.0)
    err = cv2.perspectiveTransform(centres.reshape(-1, 1, 2), fitted) - cv2.perspectiveTransform(
        centres.reshape(-1, 1, 2), true_h)
    assert n >= 0.8 * len(centres) and np.abs(err).max() < 2.0
    # Where the page is as white as the paper behind it, no outline and no
    # grid can be trusted: refused (or right), never silently wrong.
    monkeypatch.undo()
    image, _ = on_a_desk(page, paper=232, seed=1)
    out = read_omrchecker_image_bytes(jpeg(image), t)[0].to_dict()
    assert_right_or_flagged(out, expected, must_read=False)


def test_cut_off_sheet_and_a_photo_of_something_else_are_refused():
    t = page_template()
    sim = simulate_omrchecker_sheet(t, some_answers(t), preset="clean", seed=0)
    h = sim.image.shape[0]
    cut = sim.image[: int(h * 0.6)]
    out = read_omrchecker_sheet(cut, t).to_dict()
    assert "cut_off" in out["sheet_flags"] and out["error"] and out["answers"] == {}
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (900, 700), dtype=np.uint8), (0, 0), 6)
    out = read_omrchecker_sheet(noise, t).to_dict()
    assert out["error"] and out["answers"] == {} and out["needs_review"]
    out = read_omrchecker_image_bytes(b"not an image", t)[0].to_dict()
    assert out["sheet_flags"] == ["unreadable"]


def test_cli_reads_with_an_omrchecker_template(tmp_path):
    t = marker_template()
    (tmp_path / "template.json").write_text(json.dumps(MARKER_TEMPLATE))
    (tmp_path / "omr_marker.jpg").write_bytes(png(marker_image()))
    answers = some_answers(t, seed=7)
    sim = simulate_omrchecker_sheet(t, answers, preset="scan_mild", seed=5)
    image = tmp_path / "sheet.jpg"
    image.write_bytes(sim.encode_jpeg())
    result = subprocess.run([sys.executable, "-m", "batches.omr", "read", "--omrchecker-template",
                             tmp_path / "template.json", image, "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[0])
    assert out["format"] == "omrchecker" and out["file"] == str(image)
    assert out["answers"] == expected_response(t, answers)


def bench_sheet(preset: str, style: str, seed: int):
    """A sheet as ``bench/omr_accuracy.py --omrchecker`` draws it (answers and
    capture from one seed), read back: (reading, expected response)."""
    t = marker_template()
    rng = np.random.default_rng(seed)
    answers = {f.label: f.values[rng.integers(len(f.values))] for f in t.fields if rng.random() > 0.1}
    return read_back(t, answers, preset, seed, style=style), expected_response(t, answers)


@pytest.mark.parametrize("preset, style, seed", [
    # Ticks blurred by a rough scan: far under the threshold, but each stands
    # out of its field (read blank, they are flagged).
    ("scan_hard", "tick", 44001),
    ("scan_moderate", "tick", 33001),
    # Light marks a two-level scan nearly dropped: the few left stand out of
    # their fields, and on a sheet without any clear mark every blank field
    # is doubt (others may have been dropped whole).
    ("scan_bitonal", "light", 86001),
    # A photo whose page is found a row off: each block's end row on bare
    # paper, never read silently.
    ("photo_hard", "half", 65001),
    # "E" half filled in half the fields it is printed in: those half fills
    # must not set E's blank level (read blank, silently, before).
    ("photo_exif", "half", 105000),
    # Upside down, one block out of focus (every bubble of it dark): that
    # block must not set the blank level of the letters light marks elsewhere
    # are compared with.
    ("photo_hard", "light", 62000),
])
def test_marks_a_rough_capture_nearly_lost_and_a_grid_a_row_off_are_never_silently_wrong(preset, style, seed):
    out, expected = bench_sheet(preset, style, seed)
    assert_right_or_flagged(out, expected, must_read=False)


@pytest.mark.parametrize("style, seed", [
    # Turned 188 degrees and tilted, the page off to one side among other
    # papers: the marker in each quarter of the image is not the page's.
    ("pencil", 63000),
    # The page small in the photo's lower left, turned a few degrees more
    # than a marker matched upright allows: one quarter's best match is 0.29.
    ("pen", 69001),
])
def test_markers_of_a_page_off_centre_and_at_a_slant_are_found_by_their_layout(style, seed):
    out, expected = bench_sheet("photo_hard", style, seed)
    assert out["error"] is None, out["error"]
    assert "markers searched over the whole image" in out["alignment"]
    assert_right_or_flagged(out, expected, must_read=False)
    right = [c for c, v in expected.items() if out["answers"][c] == v]
    assert len(right) >= 0.9 * len(expected), (out["answers"], expected)


def test_blocks_a_curled_photo_bends_off_their_place_are_found_on_their_outlines_and_flagged(monkeypatch):
    # Paper curled 12 mm off the desk, photographed at a slant: the corner
    # markers are found, but the middle of the sheet is bent most of a
    # pitch off where they put it (each block's outlines were a row or a
    # column from where the page put the block: refused before). Where the
    # whole layout cannot be fitted on its outlines (a rival fit a row off;
    # here it is left out), each block is found again as a whole on its
    # printed outlines, read there, and flagged: a block printed otherwise
    # than the template is found so too.
    monkeypatch.setattr("batches.omr.omrchecker.reader.register_layout", lambda *a, **k: [])
    out, expected = bench_sheet("photo_hard", "mixed", 68001)
    assert out["error"] is None, out["error"]
    assert out["answers"] == expected
    assert all("misaligned" in out["flags"][c] for c in ("q1", "q6", "q13", "q5", "Roll")), out["flags"]


def test_a_curled_photo_is_read_through_the_fit_of_its_whole_layout():
    # The same sheet: the layout fitted as a whole on its outlines sits on
    # them everywhere with no block moved, and no fit a row or a column off
    # rivals it. The roll number block, which the fit leaves 0.14 pitch off
    # its outlines (under a third: ``REGISTERED_OFF``), is put on them by
    # its own fit and read right, not flagged for it.
    out, expected = bench_sheet("photo_hard", "mixed", 68001)
    assert "bubble layout" in out["alignment"]
    assert out["answers"] == expected
    assert not any("misaligned" in flags for flags in out["flags"].values()), out["flags"]


def test_placements_are_compared_with_their_blocks_found_again_on_their_outlines():
    # The curled photo above with other marks: the corner markers put most
    # blocks a row off their outlines (each found again there), while a page
    # outline merged with a paper beside it puts the bubbles less far off in
    # sum but nowhere on the printed grid. The markers' placement is the one
    # that reads.
    out, expected = bench_sheet("photo_hard", "scribble", 68001)
    assert out["error"] is None, out["error"]
    assert "markers searched over the whole image" in out["alignment"]
    assert_right_or_flagged(out, expected, must_read=False)
    assert sum(out["answers"][c] == v for c, v in expected.items()) >= 0.9 * len(expected)


def test_on_a_bent_page_a_block_the_page_put_a_value_off_is_read_through_the_layouts_fit():
    # A curled photo turned 114 degrees: the roll number block had to be
    # found again a row away; the two-digit block, two fields wide, passed
    # where the page put it a value off (its last value line keeps one of
    # two bubbles on something past the grid) and read 1 for 0.
    # Such a placement is now replaced by the fit of the whole layout,
    # which leaves the roll number block 0.18 pitch off its outlines (its
    # own fit puts it on them): every answer right.
    out, expected = bench_sheet("photo_hard", "pencil", 22001)
    assert out["error"] is None, out["error"]
    assert "bubble layout" in out["alignment"]
    assert_right_or_flagged(out, expected, must_read=False)
    assert out["answers"] == expected


def test_a_block_is_fitted_on_its_blank_outlines_not_pulled_by_its_marks():
    from batches.omr.omrchecker.grid import _better, _sample

    # Given a block of 20 bubbles whose 16 blank outlines show faint, sharp
    # evidence at their centres, and 4 marks drawn 2 px right of theirs,
    # whose evidence is broad and 50 times as strong
    yy, xx = np.mgrid[0:120, 0:140].astype(np.float32)
    centres = np.array([(30.0 + 20 * i, 20.0 + 20 * j) for j in range(5) for i in range(4)])
    marked = np.zeros(len(centres), bool)
    marked[[1, 6, 11, 16]] = True
    E = np.zeros(xx.shape, np.float32)
    for (x, y), mark in zip(centres, marked, strict=True):
        if mark:
            E += 1.0 * np.exp(-((xx - x - 2) ** 2 + (yy - y) ** 2) / 32)
        else:
            E += 0.02 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2)
    on_outlines, on_marks = centres, centres + [2.0, 0.0]
    none = np.zeros((0, 2))
    # (Their plain mean favours the placement centred on the marks.)
    assert _sample(E, on_marks).mean() > _sample(E, on_outlines).mean()
    # Then the placement on the printed outlines is the better one
    assert _better(E, on_outlines, none, on_marks, none)
    assert not _better(E, on_marks, none, on_outlines, none)
