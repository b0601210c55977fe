"""Drawing sheets for OMRChecker templates, and simulating them filled in.

Tests and benchmarks need sheets of the kind schools print for OMRChecker:
bubbles where the template's boxes are, a letter in each, the corner markers
when the template crops on markers. ``render_sheet`` draws one; the simulator
(``simulate.simulate_sheet`` with ``printed=``) fills it in and scans or
photographs it, with all of its distortions.

The physical sheet: the page is ``pageDimensions`` px at ``mm_per_px``; with
CropOnMarkers the page runs between the marker centres (OMRChecker warps the
marker centres to the page corners) and the paper extends past them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..layout import MM_PER_INCH, BubbleGeom, Group, PageLayout, Rect, Square
from ..template import Box, Mark, Template
from .importer import OmrCheckerTemplate

#: The printed bubbles ``render_sheet`` draws.
SHAPES = ("circle", "square", "oval")
#: Printed circle diameter as a share of the bubble box's smaller side.
CIRCLE_SHARE = 0.82
OUTLINE_MM = 0.28
#: ``render_sheet(frame=True)``: a block's frame this many printed radii out
#: from its outer bubbles' centres.
FRAME_AT = 1.5


def marker_image(size: int = 120) -> np.ndarray:
    """A corner marker like OMRChecker's sample one: a black square ring around
    a black square, on white (grey uint8, ``size`` px square)."""
    img = np.full((size, size), 255, np.uint8)
    t = max(2, round(size * 0.16))
    cv2.rectangle(img, (0, 0), (size - 1, size - 1), 0, -1)
    cv2.rectangle(img, (t, t), (size - 1 - t, size - 1 - t), 255, -1)
    c = round(size * 0.32)
    cv2.rectangle(img, (c, c), (size - 1 - c, size - 1 - c), 0, -1)
    return img


@dataclass(frozen=True)
class SheetGeometry:
    """The paper around a template's page, mm: ``offset`` of the page's
    top-left in the paper, paper ``width``/``height``, the marker side (0 when
    none) and the scale ``mm_per_px``."""

    offset: tuple[float, float]
    width: float
    height: float
    marker_mm: float
    mm_per_px: float


def sheet_geometry(t: OmrCheckerTemplate) -> SheetGeometry:
    k = t.mm_per_px
    pw, ph = t.page_w * k, t.page_h * k
    step = next((s for s in t.steps if s.name == "CropOnMarkers"), None)
    if step is None:
        return SheetGeometry((0.0, 0.0), pw, ph, 0.0, k)
    marker = t.images[step.options.get("relativePath", "omr_marker.jpg")]
    if "sheetToMarkerWidthRatio" in step.options:
        share = 1.0 / float(step.options["sheetToMarkerWidthRatio"])
    else:
        share = marker.shape[1] / t.processing[0]
    gap = 6.0
    # The marker is ``share`` of the paper's width, which runs a half marker and
    # ``gap`` past the page on either side.
    mm = share * (pw + 2 * gap) / (1 - share)
    m = mm / 2 + gap
    return SheetGeometry((m, m), pw + 2 * m, ph + 2 * m, mm, k)


def sheet_template(t: OmrCheckerTemplate) -> Template:
    """A stand-in engine ``Template`` with the paper's size, for the simulator's
    capture (page size, where the corners are); it prints nothing itself."""
    g = sheet_geometry(t)
    ox, oy = g.offset
    k = g.mm_per_px
    corners = [(ox, oy), (ox + t.page_w * k, oy), (ox + t.page_w * k, oy + t.page_h * k), (ox, oy + t.page_h * k)]
    return Template(name=t.name, title=t.name, page_width=g.width, page_height=g.height, pages=1,
                    marks=tuple(Mark(x, y, g.marker_mm) for x, y in corners), key=Box(0, 0, 0, 0),
                    qr=Box(0, 0, 0, 0), bubble_diameter=CIRCLE_SHARE * min(t.bubble_w, t.bubble_h) * k)


def render_sheet(t: OmrCheckerTemplate, dpi: float = 200.0, *, letters: bool = True,
                 decor: bool = True, circle_share: float = CIRCLE_SHARE,
                 shape: str = "circle", frame: bool = False) -> tuple[np.ndarray, PageLayout]:
    """The printed sheet at ``dpi`` (grey uint8) and its bubbles as a
    ``PageLayout`` in that raster's pixels (one group per OMRChecker field).
    ``letters``: each bubble's value printed in it; ``decor``: a crest and
    instructions above the bubbles when there is room; ``circle_share``: the
    printed circle's diameter over the box's smaller side (templates are often
    drawn with boxes larger or smaller than the printed bubbles); ``shape``:
    the printed bubble, a ``circle``, a ``square`` (a box with its side the
    circle's diameter) or an ``oval`` (as wide, two thirds as tall), as forms
    other than OMRChecker's print them; ``frame``: each block printed in a
    table cell, its frame ``FRAME_AT`` radii out from the outer bubbles'
    centres, where a circle drawn round them would run (sample6's check
    letters)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown bubble shape {shape!r}: one of {', '.join(SHAPES)}")
    g = sheet_geometry(t)
    px = dpi / MM_PER_INCH  # px per mm
    W, H = int(round(g.width * px)), int(round(g.height * px))
    img = np.full((H, W), 255, np.uint8)
    ox, oy = g.offset
    k = g.mm_per_px
    sub = 16  # cv2 sub-pixel drawing: coordinates in 1/16 px
    r_mm = circle_share * min(t.bubble_w, t.bubble_h) * k / 2
    thick = max(1, int(round(OUTLINE_MM * px)))
    groups = []
    font = cv2.FONT_HERSHEY_SIMPLEX
    for f in t.fields:
        bubbles = []
        for v, (cx, cy) in zip(f.values, f.centres(), strict=True):
            x, y = (ox + cx * k) * px, (oy + cy * k) * px
            # A pixel centre is at i + 0.5: cv2 draws at integer coordinates.
            centre, r = (int(round((x - 0.5) * sub)), int(round((y - 0.5) * sub))), int(round(r_mm * px * sub))
            if shape == "circle":
                cv2.circle(img, centre, r, 40, thick, cv2.LINE_AA, 4)
            elif shape == "square":
                cv2.rectangle(img, (centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r), 40, thick,
                              cv2.LINE_AA, 4)
            else:
                cv2.ellipse(img, centre, (r, r * 2 // 3), 0, 0, 360, 40, thick, cv2.LINE_AA, 4)
            if letters and len(v) <= 2:
                scale = r_mm * px / 22.0 * (1.0 if len(v) == 1 else 0.7)
                (tw, th), _ = cv2.getTextSize(v, font, scale, 1)
                cv2.putText(img, v, (int(round(x - 0.5 - tw / 2)), int(round(y - 0.5 + th / 2))), font, scale, 150,
                            max(1, int(round(scale * 1.5))), cv2.LINE_AA)
            bubbles.append(BubbleGeom(f.label, v, x, y, r_mm * px))
        groups.append(Group(f.label, f.label, "question", 0, tuple(bubbles)))
        # Printed labels, as real sheets have: a question's number before its
        # row, a block's name above its columns.
        x0, y0 = (ox + f.centres()[0][0] * k) * px, (oy + f.centres()[0][1] * k) * px
        lscale = r_mm * px / 20.0
        if f.direction == "horizontal":
            (tw, th), _ = cv2.getTextSize(f.label, font, lscale, 1)
            cv2.putText(img, f.label, (int(x0 - 1.6 * r_mm * px - tw), int(y0 + th / 2)), font, lscale, 30,
                        max(1, int(round(lscale * 1.6))), cv2.LINE_AA)
        elif f is next(g for g in t.fields if g.block == f.block):
            cv2.putText(img, f.block, (int(x0 - r_mm * px), int(y0 - 1.8 * r_mm * px)), font, lscale, 30,
                        max(1, int(round(lscale * 1.6))), cv2.LINE_AA)
    if frame:
        origin, m = np.array([ox, oy]), FRAME_AT * r_mm * px
        for block in dict.fromkeys(f.block for f in t.fields):
            xy = np.array([c for f in t.fields if f.block == block for c in f.centres()], np.float64)
            # (Pixel centres at i + 0.5, as the bubbles are drawn.)
            lo = np.rint(((origin + xy.min(0) * k) * px - 0.5 - m) * sub).astype(int)
            hi = np.rint(((origin + xy.max(0) * k) * px - 0.5 + m) * sub).astype(int)
            cv2.rectangle(img, tuple(lo.tolist()), tuple(hi.tolist()), 30, thick, cv2.LINE_AA, 4)
    if g.marker_mm:
        step = next(s for s in t.steps if s.name == "CropOnMarkers")
        marker = t.images[step.options.get("relativePath", "omr_marker.jpg")]
        side = int(round(g.marker_mm * px))
        mh = int(round(side * marker.shape[0] / marker.shape[1]))
        mk = cv2.resize(marker, (side, mh), interpolation=cv2.INTER_AREA)
        for cx, cy in ((0, 0), (t.page_w, 0), (t.page_w, t.page_h), (0, t.page_h)):
            x0 = int(round((ox + cx * k) * px - side / 2))
            y0 = int(round((oy + cy * k) * px - mh / 2))
            img[y0:y0 + mh, x0:x0 + side] = np.minimum(img[y0:y0 + mh, x0:x0 + side], mk)
    top = min(y for f in t.fields for _, y in f.boxes) * k  # mm below the page top, free of bubbles
    if decor and top > 20:
        # A crest and lines of instructions above the bubbles, as printed sheets
        # have: what FeatureBasedAlignment finds features on.
        rng = np.random.default_rng(len(t.name) + int(t.page_w))
        cx, cy, rr = (ox + 12) * px, (oy + top / 2 + 2) * px, min(9.0, top / 3) * px
        ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
        poly = np.stack([cx + rr * np.cos(ang) * rng.uniform(0.5, 1, 9), cy + rr * np.sin(ang) * rng.uniform(0.5, 1, 9)], 1)
        cv2.fillPoly(img, [poly.astype(np.int32)], 70, cv2.LINE_AA)
        cv2.circle(img, (int(cx), int(cy)), int(rr * 1.1), 20, max(1, int(0.5 * px)), cv2.LINE_AA)
        words = ["Fill", "the", "bubble", "completely", "with", "a", "dark", "pencil;", "erase", "cleanly.",
                 "Write", "your", "roll", "number", "and", "mark", "it", "below.", "Do", "not", "fold."]
        lh = max(8, int(round(3.2 * px)))
        y = int((oy + 8) * px) + lh * 2
        while y < (oy + top - 4) * px:
            line = " ".join(rng.choice(words, 7))
            cv2.putText(img, line, (int((ox + 26) * px), y), font, lh / 34.0, 50, max(1, lh // 14), cv2.LINE_AA)
            y += int(lh * 1.5)
    title_h = max(10, int(round(4 * px)))
    if top > 8:  # the title only where it cannot cross a bubble (some templates start at the page's top)
        cv2.putText(img, f"{t.name}: answer sheet", (int(round((ox + 8) * px)), int(round((oy + 2) * px)) + title_h),
                    font, title_h / 30.0, 60, max(1, title_h // 12), cv2.LINE_AA)
    lay = PageLayout(template=t.name, page=1, dpi=dpi, width=W, height=H,
                     marks=tuple(Square(0, 0, 0) for _ in range(4)), key=Rect(0, 0, 0, 0), qr=Rect(0, 0, 0, 0),
                     groups=tuple(groups))
    return img, lay


def simulate_omrchecker_sheet(t: OmrCheckerTemplate, answers: dict[str, str], *, preset="clean", seed: int = 0,
                              style=None, letters: bool = True, decor: bool = True,
                              circle_share: float = CIRCLE_SHARE, shape: str = "circle", frame: bool = False):
    """A filled-in sheet for ``t``, captured as ``preset`` (``simulate.PRESETS``)
    delivers it. ``answers``: {OMRChecker field label: values marked, e.g. "B",
    "AC"}; labels left out are blank. Returns a ``simulate.Simulated``."""
    from ..synthetic.simulate import simulate_sheet

    return simulate_sheet(sheet_template(t), answers, preset=preset, seed=seed, style=style,
                          printed=lambda dpi: render_sheet(t, dpi, letters=letters, decor=decor,
                                                           circle_share=circle_share, shape=shape, frame=frame))


def expected_response(t: OmrCheckerTemplate, answers: dict[str, str]) -> dict[str, str]:
    """What OMRChecker reports for ``answers`` ({field label: marked values}):
    the output columns, custom labels joined, empty fields as ``emptyValue``.
    Marked values are put in bubble order."""
    resp = {}
    for f in t.fields:
        marked = answers.get(f.label, "")
        vals = [v for v in f.values if v in _split(marked, f.values)]
        resp[f.label] = "".join(vals) if vals else f.empty_value
    return {col: "".join(resp[p] for p in t.custom_labels.get(col, [col])) for col in t.output_columns}


def _split(value: str, labels: tuple[str, ...]) -> set[str]:
    out, i = set(), 0
    by_len = sorted(labels, key=len, reverse=True)
    while i < len(value):
        for lab in by_len:
            if value.startswith(lab, i):
                out.add(lab)
                i += len(lab)
                break
        else:
            i += 1
    return out
