"""Page location: the homography from the marks, orientation, and the
outline refinement, checked against known transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from batches.omr import load_template
from batches.omr.align import (
    AlignError,
    MarkGeometry,
    apply_h,
    layout_mm,
    locate_page,
    page_candidates,
    refine_on_bubbles,
)
from batches.omr.layout import MM_PER_INCH
from tests.omr.reader_sheets import barrel, draw_sheet

A4 = load_template("a4-100q-5")
G = MarkGeometry.of(A4)


def _warp(page, M, size, background=255):
    return cv2.warpPerspective(page, M, size, flags=cv2.INTER_LINEAR, borderValue=background)


@pytest.mark.parametrize("angle", [0, 90, 180, 270, 8, -13])
def test_homography_matches_the_transform(angle):
    dpi = 150
    page = draw_sheet(A4, dpi=dpi)
    h, w = page.shape
    size = (2000, 2000)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 0.9)
    rot[:, 2] += (size[0] - w) / 2, (size[1] - h) / 2
    M = np.vstack([rot, [0, 0, 1]])
    fit = locate_page(_warp(page, M, size), [G])
    # page mm -> layout px (pixel centres at +0.5 there, at whole numbers in cv2) -> image
    S = np.array([[dpi / MM_PER_INCH, 0, -0.5], [0, dpi / MM_PER_INCH, -0.5], [0, 0, 1]])
    pts = np.array([[20.0, 20.0], [190.0, 40.0], [105.0, 150.0], [30.0, 270.0], [180.0, 280.0]])
    want = apply_h(M @ S, pts)
    got = fit.to_image(pts)
    assert np.abs(got - want).max() < 0.6  # px at ~5.3 px/mm: a tenth of a mm
    assert fit.orientation == (round(-angle / 90) * 90) % 360 and fit.orientation_sure


def test_perspective_and_candidates():
    page = draw_sheet(A4, dpi=150)
    h, w = page.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[180, 90], [w + 60, 40], [w + 140, h + 120], [60, h + 60]])
    M = cv2.getPerspectiveTransform(src, dst)
    img = _warp(page, M, (w + 300, h + 250), background=40)
    fits = list(page_candidates(img, [G]))
    assert fits, "no placement"
    S = np.array([[150 / MM_PER_INCH, 0, -0.5], [0, 150 / MM_PER_INCH, -0.5], [0, 0, 1]])
    want = apply_h(M @ S, G.centres)
    assert np.abs(fits[0].marks_px - want).max() < 1.0


def test_outline_refinement_follows_lens_distortion():
    page = draw_sheet(A4, dpi=150)
    img = barrel(page, k=0.04)
    fit = locate_page(img, [G])
    lay = layout_mm(A4, 1)
    frame = refine_on_bubbles(img, fit, lay)
    assert frame.found_share > 0.9
    # Distortion moves bubbles by up to ~1.5 mm off the marks' homography; the
    # refined centres must sit on the printed outlines.
    flat = apply_h(fit.H, frame.page_mm)
    assert np.linalg.norm(frame.centres - flat, axis=1).max() > 3  # it did move them
    # The disc darkness at the refined centre of a blank bubble is paper.
    vals = img[np.round(frame.centres[:, 1]).astype(int), np.round(frame.centres[:, 0]).astype(int)]
    assert np.percentile(vals, 5) > 200


def test_no_marks():
    img = np.full((1200, 900), 230, np.uint8)
    cv2.putText(img, "hello", (100, 600), cv2.FONT_HERSHEY_SIMPLEX, 5, 0, 12)
    with pytest.raises(AlignError) as e:
        locate_page(img, [G])
    assert "registration marks not found" in e.value.reason and e.value.flag == "not_a_sheet"
