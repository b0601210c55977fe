"""The whole bubble layout registered on the printed outlines
(``batches/omr/omrchecker/register.py``): a template whose page is the whole
image, photographed at an angle, puts its far bubbles a pitch or more off;
the layout is found as a whole, and only when no other fit a row or a
column off rivals it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from batches.omr.omrchecker import read_omrchecker_image_bytes
from batches.omr.omrchecker.grid import geometry, transform_points
from batches.omr.omrchecker.register import register_layout
from batches.omr.omrchecker.render import expected_response, render_sheet
from batches.omr.stats import median

from .real_sheets import ROOT, real_captures
from .test_omrchecker import page_template
from .test_real_sheets import _template

#: Each corner of the frame moved by this share of the width and height (a
#: photo taken at an angle, framed on the page as a whole-image template asks).
CORNERS = np.array([[-0.035, 0.035], [0.03, 0.025], [0.0, 0.03], [0.035, -0.005]])


def _at_an_angle(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image warped by ``CORNERS`` within its own frame, and the warp."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    M = cv2.getPerspectiveTransform(src, src + (CORNERS * [w, h]).astype(np.float32))
    return cv2.warpPerspective(image, M, (w, h), borderMode=cv2.BORDER_REPLICATE), M


def _marked_sheet(t, answers: dict[str, str]) -> np.ndarray:
    """The printed sheet at 100 dpi with ``answers`` filled in (a dark disc in
    each bubble marked)."""
    image, layout = render_sheet(t, 100.0)
    for g in layout.groups:
        for b in g.bubbles:
            if b.value in answers.get(g.key, ""):
                cv2.circle(image, (round(b.x), round(b.y)), round(0.8 * b.r), 40, -1, cv2.LINE_AA)
    return image


def test_the_layout_is_found_as_a_whole_where_the_image_frame_puts_it_a_pitch_off():
    t = page_template("none")
    geo = geometry(t)
    page, _ = render_sheet(t, 100.0)
    image, M = _at_an_angle(page)
    h, w = image.shape
    whole = np.diag([w / t.page_w, h / t.page_h, 1.0])  # the whole image as the page
    truth = transform_points(M @ whole, geo.centres)
    pitch = float(median(geo.block_pitch)) * w / t.page_w
    # The frame is no placement here: bubbles well over half a pitch off it.
    assert np.hypot(*(transform_points(whole, geo.centres) - truth).T).max() > 0.8 * pitch
    fits = register_layout(image, whole, geo.centres, geo.block, float(median(geo.half.min(1))),
                           float(median(geo.block_pitch)))
    assert fits
    H, count, off = fits[0]
    assert np.hypot(*(transform_points(H, geo.centres) - truth).T).max() < 0.15 * pitch
    assert count >= 0.95 * len(geo.centres)
    assert off.max() < 0.1  # every block as the template has it


def test_a_whole_image_template_photographed_at_an_angle_reads_right():
    t = page_template("none")
    answers = {f.label: f.values[(3 * k + 1) % len(f.values)] for k, f in enumerate(t.fields) if k % 4 != 3}
    image, _ = _at_an_angle(_marked_sheet(t, answers))
    out = read_omrchecker_image_bytes(cv2.imencode(".png", image)[1].tobytes(), t, source="angle.png")[0]
    assert out.error is None
    assert "bubble layout" in out.alignment
    assert out.answers == expected_response(t, answers)
    assert not out.needs_review, out.to_dict()["flags"]


def test_a_layout_that_fits_as_well_a_column_off_is_not_taken():
    # sample3's blocks stand in even rows and columns: blurred, its layout
    # fits the printed outlines fully both where it is and a column off
    # (both 1.00 placed), and its page outline places it nowhere near. The
    # fit is ambiguous: neither is taken, the sheet is left to review.
    # (Blurred 1.36 px, its page outline places it since its blocks are
    # fitted on their blank outlines rather than on their marks.)
    set_path, name = "sample3/colored-thick-sheet", "rgb-100-gsm.jpg"
    image = cv2.GaussianBlur(cv2.imread(str(ROOT / set_path / name)), (0, 0), 1.5)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 59])[1].tobytes()
    out = read_omrchecker_image_bytes(data, _template(set_path), source=name)[0]
    assert "bubble layout" not in (out.alignment or "")
    assert out.error is not None or out.needs_review


@pytest.mark.parametrize("name", ["omr-3.png"])
def test_a_sheet_whose_page_is_placed_a_pitch_off_in_one_block_is_not_flagged_everywhere(name):
    set_path = "community/Sandeep-1507"
    row = dict(next(r for r, p in real_captures(set_path) if p.name == name))
    out = read_omrchecker_image_bytes((ROOT / set_path / name).read_bytes(), _template(set_path), source=name)[0]
    flagged = [f for f, fl in out.to_dict()["flags"].items() if "misaligned" in fl]
    # The booklet grid (printed 1..9, 0, the template says 0..9) sits a row off
    # the template: it is read as printed (tests/omr/test_digit_order.py); the
    # 200 questions are read, not sent to review because one block had to be
    # looked for further than half a pitch.
    assert out.answers["Booklet_No"] == row["Booklet_No"]
    assert len(flagged) <= 20, flagged
    assert all(out.answers[q] == row[q] for q in row if q.startswith("q"))


def test_a_fit_is_not_refused_for_a_rival_placed_far_worse_with_more_bubbles_near_outlines():
    # sample6 turned 3.8 degrees in a frame widened to hold it (JPEG 51):
    # the whole-image template puts its far bubbles pitches off. The layout's
    # fit places at 1.00; another, a pitch or more off, places at 0.04 but
    # has one more bubble near an outline (printed digits count as outlines
    # there). It is no rival: the sheet reads, where it was refused.
    name = "sample_roll_02.jpg"
    row = dict(next(r for r, p in real_captures("sample6") if p.name == name))
    out = read_omrchecker_image_bytes(_sample6_turned(name, -3.8036631129606926, 51), _template("sample6"),
                                      source=name)[0]
    assert out.error is None
    assert "bubble layout" in out.alignment
    assert out.answers["Roll"] == row["Roll"]


def test_a_whole_image_template_refusing_a_turned_photo_says_why_and_not_that_it_is_cut_off():
    # sample6 turned 3.6 degrees in a widened frame (JPEG 80): no fit of the
    # layout is taken. The page taken as the whole image lies along the
    # image's border by itself: that is no sign of a sheet cut off.
    name = "sample_roll_01.jpg"
    out = read_omrchecker_image_bytes(_sample6_turned(name, 3.61433871833356, 80), _template("sample6"),
                                      source=name)[0]
    assert out.error is not None
    assert "cut off" not in out.error and "cut_off" not in out.sheet_flags
    assert "misaligned" in out.sheet_flags
    assert "the template's page is the whole image" in out.error


def _sample6_turned(name: str, angle: float, quality: int) -> bytes:
    """A sample6 scan turned ``angle`` degrees in a frame widened to hold
    it (``bench/real_sheet_variants.py``'s ``rotate``), as a JPEG."""
    image = cv2.imread(str(ROOT / "sample6" / "doc-scans" / name))
    h, w = image.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    W, H = int(w * c + h * s) + 1, int(h * c + w * s) + 1
    M[:, 2] += ((W - w) / 2, (H - h) / 2)
    turned = cv2.warpAffine(image, M, (W, H), borderMode=cv2.BORDER_REPLICATE)
    return cv2.imencode(".jpg", turned, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
