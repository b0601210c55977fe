"""Where the template's page is in the image: its pre-processors, run at a
modest processing size, as homographies (page px -> image px).

``candidates`` yields placements likeliest first, lazily: the template's own
steps (``CropPage`` on a quick page outline, ``CropOnMarkers`` inside it,
``FeatureBasedAlignment``), then, when the reader finds the bubbles are not
where a placement puts them, the other page outlines (other brightness
levels, edges) with the steps run inside each, and the whole image. The
reader checks each on the printed bubbles (``grid.py``) and stops at the
first that fits.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..stats import percentile
from .importer import OmrCheckerTemplate
from .steps import (
    StepError,
    _quad_from_contour,
    _refine_sides,
    _valid_quad,
    ecc_to_reference,
    filter_image,
    find_markers,
    markers_anywhere,
    match_reference,
    order_corners,
    page_candidates,
    rect_h,
)

#: The image the page is located on has this long side (px) at most.
PROCESSING_LONG = 1000
#: The quick page outline is looked for at this long side (px).
OUTLINE_LONG = 500
#: Share of a found page's size searched past each side for its markers.
MARGIN = 0.1


#: How a placement that takes the whole image as the page is named (its
#: ``Candidate.how`` starts so, whatever steps follow).
WHOLE_IMAGE = "whole image"


@dataclass
class Candidate:
    H: np.ndarray  # template page px -> processing image px
    how: str
    notes: list[str] = field(default_factory=list)


def processing_image(grey: np.ndarray, t: OmrCheckerTemplate) -> tuple[np.ndarray, np.ndarray, float]:
    """(the image the page is located on, the same without filters, their px
    per image px): shrunk to ``PROCESSING_LONG``, with the template's blurs
    and levels applied as OMRChecker applies them at its processing size."""
    h, w = grey.shape
    # A whole factor first (area averaging is fast then), the rest by interpolation.
    k = max(1, int(max(h, w) // PROCESSING_LONG))
    work = grey if k == 1 else cv2.resize(grey, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    hh, ww = work.shape
    f = min(1.0, PROCESSING_LONG / max(hh, ww))
    if f < 1.0:
        work = cv2.resize(work, (max(1, round(ww * f)), max(1, round(hh * f))), interpolation=cv2.INTER_LINEAR)
    f = work.shape[1] / w
    plain = work
    scale = work.shape[1] / float(t.processing[0])
    for step in t.steps:
        if step.name in ("GaussianBlur", "MedianBlur", "Levels"):
            work = filter_image(work, step.name, step.options, scale)
    return work, plain, f


def omrchecker_outline(grey: np.ndarray, t: OmrCheckerTemplate) -> np.ndarray | None:
    """The page outline as OMRChecker's CropPage finds it (``grey`` px), or
    None: templates are measured on OMRChecker's own crop, so the same crop
    fits them best. On the image resized to the processing size: a light
    blur, brightness truncated at 200 and stretched, a closing by the step's
    ``morphKernel``, Canny edges, and the largest convex outline that
    approximates a rectangle (corner cosines under 0.35)."""
    h, w = grey.shape
    pw, ph = t.processing
    img = cv2.resize(grey, (pw, ph), interpolation=cv2.INTER_LINEAR)
    img = cv2.normalize(cv2.GaussianBlur(img, (3, 3), 0), None, 0, 255, cv2.NORM_MINMAX)
    _, img = cv2.threshold(img, 200, 255, cv2.THRESH_TRUNC)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
    kernel = next((s.options.get("morphKernel") for s in t.steps if s.name == "CropPage"), None) or [10, 10]
    closed = cv2.morphologyEx(img, cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_RECT, (int(kernel[0]), int(kernel[1]))))
    edges = cv2.Canny(closed, 185, 55)
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    hulls = sorted((cv2.convexHull(c) for c in contours), key=cv2.contourArea, reverse=True)[:5]
    for c in hulls:
        if cv2.contourArea(c) < 80000 * (pw * ph) / (666 * 820):
            continue
        approx = cv2.approxPolyDP(c, 0.025 * cv2.arcLength(c, True), True).reshape(-1, 2).astype(np.float64)
        if len(approx) != 4:
            continue
        q = order_corners(approx)
        cos = [abs(float(np.dot(q[i - 1] - q[i], q[(i + 1) % 4] - q[i]))
                   / (np.linalg.norm(q[i - 1] - q[i]) * np.linalg.norm(q[(i + 1) % 4] - q[i]) + 1e-9))
               for i in range(4)]
        if max(cos) >= 0.35:
            continue
        return (q + 0.5) * [w / pw, h / ph] - 0.5
    return None


def quick_outlines(work: np.ndarray) -> Iterator[np.ndarray]:
    """Page outlines (TL, TR, BR, BL, ``work`` px), cheapest first: the large
    bright region at Otsu's level, then at lower and higher levels."""
    h, w = work.shape
    f = min(1.0, OUTLINE_LONG / max(h, w))
    small = work if f >= 1.0 else cv2.resize(work, (max(1, round(w * f)), max(1, round(h * f))),
                                             interpolation=cv2.INTER_AREA)
    f = small.shape[1] / w
    blur = cv2.GaussianBlur(small, (5, 5), 0)
    sh, sw = small.shape
    k = max(3, round(min(sh, sw) / 40)) | 1
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    hi = float(percentile(blur, 97))
    seen: list[np.ndarray] = []

    def new(contours) -> Iterator[np.ndarray]:
        for cnt in contours:
            q = _quad_from_contour(cnt)
            if q is None or not _valid_quad(q, (sh, sw), 0.08):
                continue
            q = order_corners(q)
            if any(np.abs(q - o).max() < 0.02 * max(sh, sw) for o in seen):
                continue
            seen.append(q)
            # As OMRChecker finds it first (templates are measured on its
            # crop), then moved onto the paper's edge at full resolution.
            quad = (q + 0.5) / f - 0.5
            yield quad
            yield _refine_sides(work, quad)

    for level in (otsu, 0.5 * (otsu + hi)):
        _, bright = cv2.threshold(blur, level, 255, cv2.THRESH_BINARY)
        bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
        bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        yield from new(sorted(contours, key=cv2.contourArea, reverse=True)[:1])
    # Edges, as OMRChecker's CropPage finds the page: a page barely brighter
    # than what it lies on (a light cloth, a desk) still has a clear edge.
    _, tr = cv2.threshold(blur, 210, 255, cv2.THRESH_TRUNC)
    tr = cv2.normalize(tr, None, 0, 255, cv2.NORM_MINMAX)
    closed = cv2.morphologyEx(tr, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    edges = cv2.dilate(cv2.Canny(closed, 55, 185), np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    yield from new(sorted(contours, key=lambda c: cv2.contourArea(cv2.convexHull(c)), reverse=True)[:4])


def _page_h(quad: np.ndarray) -> tuple[np.ndarray, float, float]:
    fw = float(max(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[3])))
    fh = float(max(np.linalg.norm(quad[3] - quad[0]), np.linalg.norm(quad[2] - quad[1])))
    return rect_h(fw, fh, quad), fw, fh


def run_steps(work: np.ndarray, t: OmrCheckerTemplate, quad: np.ndarray | None, complete: bool = False) -> Candidate:
    """The template's alignment steps as one homography, template page px ->
    ``work`` px. ``quad``: the page outline to use for ``CropPage`` (and, for
    a template without one, to search markers in); None: the whole image.
    ``complete``: a corner marker not found is placed from the other three
    (``steps.find_markers``)."""
    h, w = work.shape
    H, fw, fh = np.eye(3), float(w), float(h)
    how: list[str] = []
    notes: list[str] = []
    cropped = False
    if quad is not None:
        H, fw, fh = _page_h(quad)
        cropped = True
        how.append("CropPage" if "CropPage" in t.alignment() else "page outline")
    for step in t.steps:
        if step.name == "CropOnMarkers":
            o = step.options
            marker = t.images[o.get("relativePath", "omr_marker.jpg")]
            if "sheetToMarkerWidthRatio" in o:
                share = 1.0 / float(o["sheetToMarkerWidthRatio"])
            else:
                share = marker.shape[1] / t.processing[0]
            kw = dict(min_match=float(o.get("min_matching_threshold", 0.3)),
                      max_variation=float(o.get("max_matching_variation", 0.41)), wide=not cropped)
            Hs, sw, sh = H, fw, fh
            if cropped:
                # A page outline found a little short must not cut a marker off.
                Hs = H @ np.array([[1, 0, -MARGIN * fw], [0, 1, -MARGIN * fh], [0, 0, 1]])
                sw, sh = fw * (1 + 2 * MARGIN), fh * (1 + 2 * MARGIN)
                share = share / (1 + 2 * MARGIN)
            try:
                centres, _ = find_markers(work, Hs, sw, sh, marker, share, **kw)
            except StepError as exc:
                # A weak match accepted (``complete``: one missing, off the
                # image's edge, placed from the other three instead).
                try:
                    centres, _ = find_markers(work, Hs, sw, sh, marker, share, lenient=True, complete=complete,
                                              **kw)
                except StepError:
                    if not cropped:
                        raise
                    # On a paper larger than the template's page (a slip
                    # below it) the markers are not in the outline's corners:
                    # over the whole of each quarter, at more sizes.
                    centres, _ = find_markers(work, Hs, sw, sh, marker, share, lenient=True, complete=complete,
                                              **{**kw, "wide": True})
                notes.append(f"{exc.reason}: {'placed from the other three' if complete else 'accepted'}, "
                             "the bubble outlines confirm the placement")
            corners = cv2.perspectiveTransform(centres.reshape(-1, 1, 2).astype(np.float64), Hs).reshape(4, 2)
            H, fw, fh = rect_h(t.page_w, t.page_h, corners), t.page_w, t.page_h
            cropped = True
            how.append("CropOnMarkers")
        elif step.name == "FeatureBasedAlignment":
            if quad is not None and "CropPage" not in t.alignment():
                how.append("instead of FeatureBasedAlignment")  # the reference is the sheet: so is its outline
                continue
            ref = t.images[step.options["reference"]]
            try:
                H = match_reference(work, ref)  # reference px -> work px
            except StepError as exc:
                # OMRChecker's premise: the reference is the frame, a little off.
                # Bubble grids repeat, so ORB often matches the wrong bubble:
                # align on the reference's intensities instead.
                H = ecc_to_reference(work, H @ np.diag([fw / ref.shape[1], fh / ref.shape[0], 1.0]), ref)
                notes.append(f"{exc.reason}: aligned on the reference image's intensities instead")
            fw, fh = float(ref.shape[1]), float(ref.shape[0])
            cropped = True
            how.append("FeatureBasedAlignment")
    if not how:
        how.append(WHOLE_IMAGE)
    return Candidate(H @ np.diag([fw / t.page_w, fh / t.page_h, 1.0]), " + ".join(how), notes)


def _marker_share(t: OmrCheckerTemplate, options: dict, marker: np.ndarray) -> float:
    """The marker's width as a share of the page's (OMRChecker's ``sheetToMarkerWidthRatio``, else its
    pixel width in the processing image)."""
    if "sheetToMarkerWidthRatio" in options:
        return 1.0 / float(options["sheetToMarkerWidthRatio"])
    return marker.shape[1] / t.processing[0]


def markers_over_the_image(work: np.ndarray, t: OmrCheckerTemplate) -> Candidate | StepError | None:
    """The page placed on its corner markers searched for over the whole
    image by their shape (``steps.markers_anywhere``: four matches of one
    size at the corners of a page), each then found again in its corner of
    a frame around them, as ``CropOnMarkers`` finds them on a cropped page
    (the light divided out, the page's slant undone). None for a template
    without ``CropOnMarkers``."""
    step = next((s for s in t.steps if s.name == "CropOnMarkers"), None)
    if step is None:
        return None
    o = step.options
    marker = t.images[o.get("relativePath", "omr_marker.jpg")]
    share = _marker_share(t, o, marker)
    try:
        centres, _scores = markers_anywhere(work, marker, share, t.page_w, t.page_h)
    except StepError as exc:
        return exc
    how = "CropOnMarkers (markers searched over the whole image)"
    # A frame a marker's width wider than the markers on every side.
    across = (np.linalg.norm(centres[1] - centres[0]) + np.linalg.norm(centres[2] - centres[3])) / 2
    down = (np.linalg.norm(centres[3] - centres[0]) + np.linalg.norm(centres[2] - centres[1])) / 2
    side = share * across
    ex, ey = side / max(across, 1.0), side / max(down, 1.0)
    unit = rect_h(1.0, 1.0, centres)
    frame = cv2.perspectiveTransform(np.array([[[-ex, -ey]], [[1 + ex, -ey]], [[1 + ex, 1 + ey]], [[-ex, 1 + ey]]]),
                                     unit).reshape(4, 2)
    fw, fh = across + 2 * side, down + 2 * side
    H_frame = rect_h(fw, fh, frame)
    kw = dict(min_match=float(o.get("min_matching_threshold", 0.3)),
              max_variation=float(o.get("max_matching_variation", 0.41)))
    notes: list[str] = []
    try:
        try:
            found, _ = find_markers(work, H_frame, fw, fh, marker, side / fw, **kw)
        except StepError as exc:
            found, _ = find_markers(work, H_frame, fw, fh, marker, side / fw, lenient=True, **kw)
            notes.append(f"{exc.reason}: accepted, the bubble outlines confirm the placement")
        centres = cv2.perspectiveTransform(found.reshape(-1, 1, 2).astype(np.float64), H_frame).reshape(4, 2)
    except StepError as exc:
        # Where the shape search put them: the bubble outlines confirm it or not.
        notes.append(f"{exc.reason} in the frame around the markers: their centres taken as first found")
    return Candidate(rect_h(t.page_w, t.page_h, centres), how, notes)


#: The skew of a page's printed lines is looked for within this many degrees
#: (in steps of a half, then of a tenth around the best); under ``SKEW_MIN``
#: it is left to the grid's fit.
SKEW_RANGE = 5.0
SKEW_MIN = 0.4


def _row_spread(ink: np.ndarray, angle: float) -> float:
    """How much the row sums of ``ink`` turned back by ``angle`` vary."""
    h, w = ink.shape
    M = cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0)
    return float(np.var(cv2.warpAffine(ink, M, (w, h), flags=cv2.INTER_LINEAR).sum(1)))


def skew(work: np.ndarray) -> float:
    """The angle (degrees, counter-clockwise in the image) by which the
    page's printed rows lie turned: the one at which the dark pixels' row
    sums vary most (rows of bubbles, of text and rules line up then), as a
    scanner that fed a page at a slant turns it."""
    ink = cv2.adaptiveThreshold(work, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 25, 10)
    ink = ink.astype(np.float32)
    h, w = ink.shape
    f = min(1.0, 400.0 / max(h, w))
    small = cv2.resize(ink, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    coarse = np.arange(-SKEW_RANGE, SKEW_RANGE + 1e-9, 0.5)
    a0 = float(coarse[int(np.argmax([_row_spread(small, a) for a in coarse]))])
    fine = a0 + np.arange(-0.5, 0.5 + 1e-9, 0.1)
    v = [_row_spread(ink, a) for a in fine]
    k = int(np.argmax(v))
    if 0 < k < len(v) - 1:  # the peak between the steps, by a parabola
        den = v[k - 1] - 2 * v[k] + v[k + 1]
        return float(fine[k] + (0.05 * (v[k - 1] - v[k + 1]) / den if den < 0 else 0.0))
    return float(fine[k])


def deskewed(work: np.ndarray, c: Candidate) -> Candidate | None:
    """``c`` turned about the image's centre by the page's ``skew``: a scan
    whose page fills the image, fed at a slant (the template's page is the
    image, so its corners tell nothing). None when the page lies square."""
    a = skew(work)
    if abs(a) < SKEW_MIN:
        return None
    h, w = work.shape
    R = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), a, 1.0), [0, 0, 1]])
    return Candidate(R @ c.H, f"{c.how}, turned {a:+.2f} degrees as its printed rows lie", list(c.notes))


def candidates(work: np.ndarray, t: OmrCheckerTemplate) -> Iterator[Candidate | StepError]:
    """Placements to try, likeliest first (a ``StepError`` for one that
    failed, so the reader can tell why when none is left)."""
    align = t.alignment()
    outlines_first = "CropPage" in align
    tried: list[np.ndarray] = []

    def from_outline(q: np.ndarray) -> Candidate | StepError:
        tried.append(q)
        try:
            c = run_steps(work, t, q)
        except StepError as exc:
            return exc
        if not outlines_first:
            c.how += " (page outline first)"
        return c

    def completed(q: np.ndarray | None) -> Iterator[Candidate]:
        # A marker off the image's edge (or matched wrongly where a weak
        # match was accepted): the fourth corner of the other three.
        if "CropOnMarkers" in align:
            try:
                yield run_steps(work, t, q, complete=True)
            except StepError:
                pass

    if not outlines_first:
        try:
            first = run_steps(work, t, None)
            yield first
            if not align:
                turned = deskewed(work, first)
                if turned is not None:
                    yield turned
        except StepError as exc:
            yield exc
        # One marker per quarter of the image is not where a page lies off
        # centre or at a slant: the markers by their shape and layout.
        found = markers_over_the_image(work, t)
        if found is not None:
            yield found
        yield from completed(None)
    else:
        q = omrchecker_outline(work, t)
        if q is not None:
            yield from_outline(q)
            yield from completed(q)
    quick = quick_outlines(work)
    for q in itertools.islice(quick, 2):  # Otsu's level, as found and refined
        yield from_outline(q)
    if outlines_first:
        # Markers inside a page outline are looked for in its corners: on a
        # paper larger than the template's page (a slip below it, a fold) they
        # are not there. The markers by their shape and layout instead.
        found = markers_over_the_image(work, t)
        if found is not None:
            yield found
    # The slower, wider search: outlines at more levels, opened harder (a
    # pen or a hand over the page), from their straight runs, and from edges;
    # then what is left of the quick ones.
    try:
        more = [q for q, _notes in page_candidates(work, 8)]
    except StepError as exc:
        more = []
        yield exc
    for q in itertools.chain(more, quick):
        if all(np.abs(q - o).max() > 0.01 * max(work.shape) for o in tried):
            yield from_outline(q)
    if outlines_first:
        try:
            c = run_steps(work, t, None)
            if "CropPage" not in c.how:
                yield c
        except StepError as exc:
            yield exc
