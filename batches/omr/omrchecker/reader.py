"""Reading a sheet laid out by an OMRChecker template.

There is no QR code and no registration mark of this engine's kind: the page is
located by the template's own pre-processors (``steps.py``), with a page-outline
fallback for photos (``CropPage`` tried when the declared steps fail or leave
the bubbles where they are not). From there the engine's own reader takes
over: the placement is refined on the printed bubble outlines
(``align.refine_on_bubbles``), each bubble is measured against this sheet's paper
and black (``bubbles.measure``), and decided against this sheet's own blank
level and noise (``bubbles.sheet_levels``/``decide_groups``), with every doubt
flagged as for the engine's own sheets (``docs/reader.md``).

Answers follow OMRChecker's conventions: each field is its marked values
concatenated in bubble order, or the template's ``emptyValue``; custom labels
concatenate their fields; keys are the template's output columns.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .. import bubbles as bub
from ..align import (
    Background,
    BubbleFrame,
    MarkGeometry,
    PageFit,
    _background,
    _ring_evidence,
    apply_h,
    jacobians,
    ray_profiles,
    refine_on_bubbles,
    to_grey,
    verify_frame,
)
from ..imageio import MAX_PIXELS
from ..layout import BubbleGeom, Group, PageLayout, Rect, Square
from ..reader import FAIL_FIT, RING_FIT_FAIL, RING_FIT_OK, SURE_FIT, SheetReading, read_pages
from .importer import OmrCheckerTemplate
from .steps import (
    StepError,
    ecc_refine,
    ecc_to_reference,
    filter_image,
    find_markers,
    find_page,
    fit_on_grid,
    match_reference,
    page_candidates,
    rect_h,
)

#: Share of a found page's size searched past each side for its markers.
MARGIN = 0.1
#: Share of the places one pitch outside a block's side showing a bubble
#: outline that flags (refuses) a placement as a row or column off.
BORDER_FLAG = 0.3
BORDER_FAIL = 0.5
#: A bubble's printed outline darker than its inside by this much (darkness,
#: 0..1) counts as printed; otherwise the box is taken as the bubble.
OUTLINE_MIN = 0.05
#: Share of the template's bubbles that may fall outside the image before the
#: sheet is refused as cut off (any at all is flagged).
CUT_OFF_LIMIT = 0.02
#: Printed outlines blurred over more than this share of the bubble radius
#: (edge spread, 10-90 %) flag the sheet ``blurred``; a sheet refused for a
#: placement that cannot be verified is said to be too blurred over BLUR_FAIL.
BLUR_FLAG = 0.35
BLUR_FAIL = 0.3


@dataclass
class OmrCheckerReading(SheetReading):
    """A ``SheetReading`` of an OMRChecker sheet. ``homography`` maps OMRChecker
    page px (``pageDimensions``) to image px; ``alignment`` says how the page was
    found; ``fields`` holds every field before custom labels join them."""

    alignment: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["format"] = "omrchecker"
        out["alignment"] = self.alignment
        out["fields"] = dict(self.fields)
        out["template_notes"] = list(self.notes)
        return out


# ---------------------------------------------------------------- layout

_LAYOUTS: dict[tuple[int, float], tuple[OmrCheckerTemplate, PageLayout]] = {}


def layout_mm(t: OmrCheckerTemplate, r_mm: float) -> PageLayout:
    """The template's bubbles as an engine ``PageLayout`` in mm (OMRChecker page
    px times ``t.mm_per_px``), one group per OMRChecker field."""
    key = (id(t), round(r_mm, 3))
    hit = _LAYOUTS.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    k = t.mm_per_px
    groups = []
    for f in t.fields:
        bubbles = tuple(BubbleGeom(f.label, v, cx * k, cy * k, r_mm) for v, (cx, cy) in zip(f.values, f.centres(), strict=True))
        groups.append(Group(f.label, f.label, "question", 0, bubbles))
    lay = PageLayout(template=t.name, page=1, dpi=25.4, width=round(t.page_w * k), height=round(t.page_h * k),
                     marks=tuple(Square(x * k, y * k, 0.0) for x, y in _corners(t)),
                     key=Rect(0, 0, 0, 0), qr=Rect(0, 0, 0, 0), groups=tuple(groups))
    if len(_LAYOUTS) > 64:
        _LAYOUTS.clear()
    _LAYOUTS[key] = (t, lay)
    return lay


def _corners(t: OmrCheckerTemplate) -> np.ndarray:
    return np.array([[0, 0], [t.page_w, 0], [t.page_w, t.page_h], [0, t.page_h]], np.float64)


# ---------------------------------------------------------------- locating the page

@dataclass
class _Placement:
    H: np.ndarray  # OMRChecker page px -> image px
    how: str
    notes: list[str]


def _run_steps(work: np.ndarray, t: OmrCheckerTemplate, *, page: tuple | None = None) -> _Placement:
    """The template's alignment steps as one homography. ``page``: a page
    outline (corners, notes) to start from (the photo fallback) or to use for
    CropPage."""
    h, w = work.shape
    H = np.eye(3)
    fw, fh = float(w), float(h)
    cropped = False
    how: list[str] = []
    notes: list[str] = []
    page_first = page is not None and (not t.alignment() or t.alignment()[0] != "CropPage")
    if page_first:
        quad, n = page
        fw = float(max(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[3])))
        fh = float(max(np.linalg.norm(quad[3] - quad[0]), np.linalg.norm(quad[2] - quad[1])))
        H = rect_h(fw, fh, quad)
        cropped = True
        how.append("page outline")
        notes += n
    for step in t.steps:
        if step.name == "CropPage":
            if cropped:
                continue
            quad, n = page if page is not None else find_page(work)
            fw = float(max(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[3])))
            fh = float(max(np.linalg.norm(quad[3] - quad[0]), np.linalg.norm(quad[2] - quad[1])))
            H = rect_h(fw, fh, quad)
            cropped = True
            how.append("CropPage")
            notes += n
        elif step.name == "CropOnMarkers":
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
                # A page outline found short (a shadow over a corner) must not cut
                # a marker off: look a little past it.
                Hs = H @ np.array([[1, 0, -MARGIN * fw], [0, 1, -MARGIN * fh], [0, 0, 1]])
                sw, sh = fw * (1 + 2 * MARGIN), fh * (1 + 2 * MARGIN)
                share = share / (1 + 2 * MARGIN)
            try:
                centres, _scores = find_markers(work, Hs, sw, sh, marker, share, **kw)
            except StepError as exc:
                centres, _scores = find_markers(work, Hs, sw, sh, marker, share, lenient=True, **kw)
                notes.append(f"{exc.reason}: accepted, the bubble outlines confirm the placement")
            img_c = apply_h(Hs, centres)
            fw, fh = t.page_w, t.page_h
            H = rect_h(fw, fh, img_c)
            cropped = True
            how.append("CropOnMarkers")
        elif step.name == "FeatureBasedAlignment":
            if page_first:
                # The fallback: the reference is the sheet, so is its outline.
                how.append("instead of FeatureBasedAlignment")
                continue
            ref = t.images[step.options["reference"]]
            try:
                Href = match_reference(work, ref)  # ref px -> image px; the reference is the current frame
            except StepError as exc:
                # OMRChecker's premise: the reference is the frame, a little off.
                start = H @ np.diag([fw / ref.shape[1], fh / ref.shape[0], 1.0])
                Href = ecc_to_reference(work, start, ref)
                notes.append(f"{exc.reason}: aligned on the reference image's intensities instead")
            if cropped and how:
                notes.append("FeatureBasedAlignment after a crop: matched on the whole image")
            fw, fh = float(ref.shape[1]), float(ref.shape[0])
            H = Href
            cropped = True
            how.append("FeatureBasedAlignment")
    if not how:
        how.append("whole image")
    S = np.diag([fw / t.page_w, fh / t.page_h, 1.0])
    return _Placement(H @ S, " + ".join(how), notes)


def _filters(grey: np.ndarray, t: OmrCheckerTemplate) -> tuple[np.ndarray, np.ndarray]:
    """(image the page is located on, image the bubbles are measured on): every
    filter step for the first; only Levels for the second (a blur the size of
    OMRChecker's would erase the printed outlines the reader locks on; its
    disc averaging does the denoising)."""
    work, meas = grey, grey
    scale = grey.shape[1] / float(t.processing[0])
    for step in t.steps:
        if step.name in ("GaussianBlur", "MedianBlur", "Levels"):
            work = filter_image(work, step.name, step.options, scale)
            if step.name == "Levels":
                meas = filter_image(meas, step.name, step.options, scale)
    return work, meas


def _make_fit(grey: np.ndarray, H_mm: np.ndarray, t: OmrCheckerTemplate, bg: Background) -> PageFit:
    k = t.mm_per_px
    corners_mm = _corners(t) * k
    pw, ph = t.page_w * k, t.page_h * k
    gx, gy = np.meshgrid(np.linspace(0.01 * pw, 0.99 * pw, 160), np.linspace(0.01 * ph, 0.99 * ph, 160))
    pts = apply_h(H_mm, np.stack([gx.ravel(), gy.ravel()], 1))
    hh, ww = grey.shape
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < ww - 1) & (pts[:, 1] >= 0) & (pts[:, 1] < hh - 1)
    pts = pts[inside]
    if len(pts) < 100:
        paper, ink = 200.0, 40.0
    else:
        vals = grey[pts[:, 1].astype(int), pts[:, 0].astype(int)].astype(np.float32)
        paper = float(np.median(bg.at(pts)))
        ink = float(np.percentile(vals, 0.5))
    J = jacobians(H_mm, np.array([[pw / 2, ph / 2]]))[0]
    scale = math.sqrt(abs(np.linalg.det(J)))
    geom = MarkGeometry(t.name, corners_mm, 0.0, (0.0, 0.0, 0.0, 0.0), (pw, ph))
    return PageFit(H=H_mm, marks_px=apply_h(H_mm, corners_mm), orientation=0, px_per_mm=scale, paper=paper,
                   ink=min(ink, 0.8 * paper), mark_size_px=0.0, key_contrast=0.0, orientation_sure=True,
                   geometry=geom, background=bg)


def _background_of(grey: np.ndarray) -> Background:
    h, w = grey.shape
    k = 2 ** max(0, round(math.log2(max(1.0, max(h, w) / 480))))
    small = grey if k == 1 else cv2.resize(grey, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    return Background(_background(small), small.shape[1] / w)


def _estimate_radius(grey: np.ndarray, fit: PageFit, t: OmrCheckerTemplate,
                     frame: BubbleFrame | None = None) -> tuple[float, float, float]:
    """The printed bubble outline's radius (mm), how clearly it shows (darkness
    of the outline over the inside) and where it has faded back to paper (mm),
    from radial profiles of a spread of unfilled bubbles: where the flat
    placement puts them, or where ``frame`` (a refined placement) reads them."""
    k = t.mm_per_px
    half = min(t.bubble_w, t.bubble_h) / 2 * k
    if frame is not None:
        n = len(frame.centres)
        idx = np.linspace(0, n - 1, min(n, 60)).astype(int)
        img, J = frame.centres[idx], frame.J[idx]
    else:
        cen = np.array([c for f in t.fields for c in f.centres()]) * k
        if len(cen) > 60:
            cen = cen[np.linspace(0, len(cen) - 1, 60).astype(int)]
        img, J = apply_h(fit.H, cen), jacobians(fit.H, cen)
    radii = np.linspace(0.1, 1.5, 29) * half
    prof = ray_profiles(grey, img, J, radii)  # (N, A, R)
    paper = fit.background.at(img)
    d = (paper[:, None, None] - prof) / np.maximum(paper[:, None, None], 1.0)
    radial = d.mean(1)  # (N, R)
    unfilled = radial[:, :6].mean(1) < 0.15
    if unfilled.sum() < 3:
        return 0.9 * half, 0.0, 1.1 * half
    mean = radial[unfilled].mean(0)
    lo, hi = np.searchsorted(radii, 0.45 * half), np.searchsorted(radii, 1.45 * half)
    j = lo + int(np.argmax(mean[lo:hi]))
    inside = float(mean[:4].mean())
    contrast = float(mean[j] - inside)
    if contrast < OUTLINE_MIN:
        return 0.9 * half, contrast, 1.1 * half
    # Where the outline (with its blur) has faded back to paper: a circle drawn
    # around the bubble is looked for beyond it.
    back = np.flatnonzero(mean[j:] < inside + 0.25 * contrast)
    r_out = float(radii[j + back[0]]) if len(back) else float(radii[-1])
    return float(radii[j]), contrast, r_out


_BORDERS: dict[int, tuple[OmrCheckerTemplate, np.ndarray, np.ndarray]] = {}


def border_points(t: OmrCheckerTemplate) -> tuple[np.ndarray, np.ndarray]:
    """Page px one bubble pitch outside every side of every block, where nothing
    is printed (points on another block's bubble are left out), and which side
    of which block each is: a block placed a whole row or column off shows
    outlines along one of its sides."""
    hit = _BORDERS.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1], hit[2]
    pts, sides = [], []
    blocks: dict[str, list] = {}
    for f in t.fields:
        blocks.setdefault(f.block, []).append(np.array(f.centres()))
    for fl in blocks.values():
        grid = np.stack(fl)  # (fields, values, 2)
        found = []
        if grid.shape[1] > 1:
            dv = grid[:, 1] - grid[:, 0]
            found += [grid[:, 0] - dv, grid[:, -1] + dv]
        if grid.shape[0] > 1:
            dl = grid[1] - grid[0]
            found += [grid[0] - dl, grid[-1] + dl]
        for side in found:
            sid = (max(sides) + 1) if sides else 0
            for p in side:
                pts.append(p)
                sides.append(sid)
    allc = np.array([c for f in t.fields for c in f.centres()])
    half = min(t.bubble_w, t.bubble_h) / 2
    keep = [i for i, p in enumerate(pts)
            if 0 <= p[0] <= t.page_w and 0 <= p[1] <= t.page_h and np.min(np.hypot(*(allc - p).T)) > 1.2 * half]
    arr = np.array([pts[i] for i in keep]).reshape(-1, 2)
    ids = np.array([sides[i] for i in keep], dtype=np.int64)
    _BORDERS[id(t)] = (t, arr, ids)
    return arr, ids


def _border_share(grey: np.ndarray, fit: PageFit, t: OmrCheckerTemplate, r_mm: float, field_fn=None) -> float:
    """The largest share, over the blocks' sides, of ``border_points`` where a
    bubble outline shows as clearly as it typically does at the template's
    bubbles (~0 when placed right; ~1 along one side of a block placed a row
    or column off)."""
    b, ids = border_points(t)
    if len(b) < 3:
        return 0.0
    b = b * t.mm_per_px
    real = np.array([c for f in t.fields for c in f.centres()]) * t.mm_per_px
    real = real[:: max(1, len(real) // 120)]
    if field_fn is not None:
        b = b + field_fn(b)
        real = real + field_fn(real)
    pb = fit.background.at(apply_h(fit.H, b))
    pr = fit.background.at(apply_h(fit.H, real))
    eb = _ring_evidence(grey, fit.H, b, pb, r_mm)
    er = _ring_evidence(grey, fit.H, real, pr, r_mm)
    typical = float(np.median(er))
    if typical <= 0.02:
        return 0.0
    shows = eb > 0.5 * typical
    worst = 0.0
    for sid in np.unique(ids):
        sel = ids == sid
        if sel.sum() >= 3:
            worst = max(worst, float(shows[sel].mean()))
    return worst


def _circle_share(grey: np.ndarray, frame: BubbleFrame, fit: PageFit, m: bub.Measures, r_out: float) -> np.ndarray:
    """``bubbles.measure``'s drawn-circle evidence, with the band moved out past
    where this sheet's printed outline has faded (heavy or blurred outlines
    reach into the engine's default band): share of the free directions dark
    there."""
    n = len(frame.centres)
    if n == 0:
        return m.circle
    band = r_out * np.array([1.05, 1.17, 1.3])
    dirs = bub._DIRS
    offs = (dirs[:, None, :] * band[None, :, None]).reshape(-1, 2)
    vals = bub.sample_offsets(grey, frame.centres, frame.J, offs).reshape(n, len(dirs), len(band))
    span = 1.0 - m.ink_ratio
    cd = (1.0 - bub._min3(vals) / m.paper[:, None]) / span
    # Free directions for a band this far out (the helper's reach is 1.46 r).
    r_eff = band[-1] / bub.CIRCLE_RADII[-1]
    free = bub._free_directions(frame.page_mm.tobytes(), n, round(float(r_eff), 6))
    nfree = free.sum(1)
    return np.where(nfree >= 8, ((cd > 0.3) & free).sum(1) / np.maximum(nfree, 1), 0.0)


def _blur_share(grey: np.ndarray, frame: BubbleFrame, m: bub.Measures) -> float | None:
    """How far the printed outlines are spread, as a share of the radius: the
    10-90 % rise of the mean radial profile outside the outline (None when too
    few unfilled bubbles show one)."""
    ok = (m.score < 0.2) & (m.ring > 0.6)
    if ok.sum() < 8:
        return None
    idx = np.flatnonzero(ok)[:80]
    r = frame.r_mm
    radii = np.linspace(0.7, 1.6, 37) * r
    prof = ray_profiles(grey, frame.centres[idx], frame.J[idx], radii).mean(1)  # (N, R)
    mean = prof.mean(0)
    j = int(np.argmin(mean[:20]))
    out = mean[j:]
    lo, hi = float(out[0]), float(np.max(out))
    if hi - lo < 5:
        return None
    a = np.argmax(out >= lo + 0.1 * (hi - lo))
    b = np.argmax(out >= lo + 0.9 * (hi - lo))
    step = (radii[1] - radii[0]) / r
    return float(max(0, b - a) * step)


# ---------------------------------------------------------------- reading

def read_omrchecker_sheet(image: np.ndarray, template: OmrCheckerTemplate, *, source: str = "") -> OmrCheckerReading:
    """Read one sheet image laid out by ``template`` (an ``OmrCheckerTemplate``).

    ``image``: grey or BGR uint8, a scan or a photo. Returns an
    ``OmrCheckerReading`` (``to_dict()``: the engine's reading JSON plus
    ``alignment``, ``fields``, ``template_notes``); never raises for a bad image.
    """
    t_start = time.perf_counter()
    t = template
    grey = to_grey(image)
    size = (int(grey.shape[1]), int(grey.shape[0]))
    out = OmrCheckerReading(file=source, template=t.name, image_size=size, notes=list(t.notes))
    timings = out.timings_ms

    def done() -> OmrCheckerReading:
        if out.error and any("image border" in n for n in out.notes) and "cut_off" not in out.sheet_flags:
            # The page outline ran along the image's edge: the sheet is likely
            # cut off there, which is why it does not fit.
            out.flag("cut_off")
            out.error += " (the page runs off the image: it may be cut off)"
        timings["total"] = (time.perf_counter() - t_start) * 1000
        return out

    h, w = grey.shape
    if min(h, w) < 100:
        out.error = f"image is too small to read ({w} x {h} pixels)"
        out.flag("unreadable")
        return done()
    sparse = grey[::9, ::9]
    if int(np.percentile(sparse, 99.5)) - int(np.percentile(sparse, 0.5)) < 30:
        out.error = "image is blank (one uniform colour, nothing printed)"
        out.flag("unreadable")
        return done()

    t0 = time.perf_counter()
    work, meas = _filters(grey, t)
    bg = _background_of(meas)
    k = t.mm_per_px
    to_px = np.diag([1 / k, 1 / k, 1.0])  # page mm -> page px
    failures: list[StepError] = []
    tried: list[tuple[float, _Placement, PageFit]] = []
    half = min(t.bubble_w, t.bubble_h) / 2 * k
    centres_px = np.array([c for f in t.fields for c in f.centres()])
    radius_of: dict[int, float] = {}  # fit -> the bubble radius its refined placement was found with

    def score(Hr: np.ndarray) -> tuple[float, PageFit]:
        fit = _make_fit(meas, Hr @ to_px, t, bg)
        r_mm, _, _ = _estimate_radius(meas, fit, t)
        lay = layout_mm(t, r_mm)
        page = np.array([[b.x, b.y] for g in lay.groups for b in g.bubbles])
        frame = BubbleFrame(fit.to_image(page), jacobians(fit.H, page), r_mm, fit.H, page)
        v = verify_frame(meas, fit, frame, step=max(1, len(page) // 150))
        # A grid placed a whole row or column off sits on outlines too: the
        # outlines it finds past the blocks' edges give it away.
        return v * (1.0 - _border_share(meas, fit, t, r_mm)), fit

    def quick(pl: _Placement) -> tuple[float, PageFit, list[tuple[float, PageFit, np.ndarray]]]:
        """The four namings of the corners (a sheet photographed sideways or
        upside down), scored: (best score, its fit, every naming whose page
        proportions fit, best first)."""
        found = []
        for roll in (0, 2, 1, 3):
            Hr = pl.H if roll == 0 else pl.H @ _turn(t, roll)
            s, fit = score(Hr)
            found.append((s, fit, Hr, _aspect_error(Hr, t)))
            if s >= GOOD_QUICK:
                break
        found.sort(key=lambda e: -e[0])
        # For the pull-in, only namings that give the page its proportions
        # (a page's long side is not its short one; a square page allows all).
        plausible = [e[:3] for e in found if e[3] < 0.25] or [e[:3] for e in found]
        return found[0][0], found[0][1], plausible

    def score_refined(Hr: np.ndarray) -> tuple[float, PageFit]:
        """As ``score``, after the outline refinement (a curled photo moves the
        middle of the page by a pitch or more from the flat placement). The
        bubble radius measured where the flat placement puts them is smeared
        when it is off: it is measured again where the refinement reads them,
        and a typical printed bubble (0.85 of the box) is tried too."""
        fit = _make_fit(meas, Hr @ to_px, t, bg)
        r0, _, _ = _estimate_radius(meas, fit, t)
        best = (-1.0, fit)
        tried_r: list[float] = []
        queue = [r0, 0.85 * half]
        while queue:
            r_mm = queue.pop(0)
            if any(abs(r_mm / r - 1) < 0.05 for r in tried_r) or len(tried_r) >= 3:
                continue
            tried_r.append(r_mm)
            frame = refine_on_bubbles(meas, fit, layout_mm(t, r_mm))
            v = verify_frame(meas, fit, frame) * (1.0 - _border_share(meas, fit, t, r_mm, frame.field))
            if v > best[0]:
                best = (v, fit)
                radius_of[id(fit)] = r_mm
            if v >= GOOD_QUICK:
                break
            r1, _, _ = _estimate_radius(meas, fit, t, frame)
            queue.insert(0, r1)
        return best

    def pull_in(pl: _Placement, fit0: PageFit, Hr: np.ndarray) -> tuple[float, PageFit] | None:
        """The placement pulled in on the printed outlines (ECC), scored."""
        r_mm, _, _ = _estimate_radius(meas, fit0, t)
        H2 = ecc_refine(meas, Hr, t.page_w, t.page_h, centres_px, max(r_mm, 0.7 * half) / k, 0.3 / k)
        if H2 is None:
            return None
        return score(H2)

    # The template's own steps first; then each likely page outline (the
    # photo fallback, or CropPage's other candidates). The ones that do not sit
    # on the bubbles at once are pulled in on the outlines, likeliest first.
    pages: list | None = None
    plan = 0
    scored: list[tuple[float, _Placement, PageFit, np.ndarray]] = []
    while True:
        if plan == 0:
            page = None
        else:
            if pages is None:
                try:
                    pages = page_candidates(work)
                except StepError as exc:
                    failures.append(exc)
                    break
            if plan - 1 >= len(pages):
                break
            page = pages[plan - 1]
        plan += 1
        try:
            pl = _run_steps(work, t, page=page)
        except StepError as exc:
            failures.append(exc)
            continue
        if page is not None and not t.alignment():
            pl.how = "page outline (fallback)"
        elif page is not None and t.alignment()[0] != "CropPage":
            pl.how += " (page outline first)"
        s, fit, namings = quick(pl)
        scored.append((s, pl, fit, namings))
        if s >= GOOD_QUICK:
            break
    in_order = list(scored)  # likeliest page outline first
    scored.sort(key=lambda e: -e[0])
    for s, pl, fit, _n in scored:
        tried.append((s, pl, fit))
    if scored and scored[0][0] < GOOD_QUICK:
        # Nothing sits on the bubbles flat: the likeliest namings, refined on
        # the outlines (curl), then pulled in (a page outline found off).
        cands = sorted(((s0, pl, f0, H0) for _s, pl, _f, namings in scored for s0, f0, H0 in namings[:2]),
                       key=lambda e: -e[0])
        for _s0, pl, _f0, H0 in cands[:3]:
            s, fit = score_refined(H0)
            if s > tried[0][0]:
                tried.insert(0, (s, pl, fit))
            if s >= GOOD_QUICK:
                break
        tried.sort(key=lambda e: -e[0])
    if tried and tried[0][0] < GOOD_QUICK:
        done_pull = False
        for _s, pl, _fit, namings in scored[:2]:
            for _s0, fit0, Hr in namings[:2]:
                pulled = pull_in(pl, fit0, Hr)
                if pulled is None:
                    continue
                s, fit = pulled
                if s > tried[0][0]:
                    pl.notes.append("placement corrected on the bubble outlines")
                    tried.insert(0, (s, pl, fit))
                if s >= GOOD_QUICK:
                    done_pull = True
                    break
            if done_pull:
                break
        tried.sort(key=lambda e: -e[0])
    if tried and tried[0][0] < GRID_POLISH:
        # Nothing verifies, or only just: the page outline may be off by more
        # than the refinement and the pull-in reach (a side found short where
        # the page meets a white paper behind it, or in a shadow), or off
        # enough that some bubbles are read beside their outlines. The template
        # says where every bubble is: the grid is fitted on the printed
        # outlines themselves, from the best placement and (when none
        # verifies) each likely outline in turn, and verified as any placement
        # is (a grid fitted a row off is refused, not read).
        pitch = _pitch(t)
        best0 = tried[0][0]
        starts: list[tuple[_Placement, np.ndarray]] = [(tried[0][1], tried[0][2].H @ np.diag([k, k, 1.0]))]
        for _s, pl, _fit, namings in in_order if best0 < GOOD_QUICK else ():
            for _s0, _f0, Hr in namings[:2]:
                c = apply_h(Hr, _corners(t))
                if all(np.abs(c - apply_h(H1, _corners(t))).max() > 0.02 * max(w, h) for _p, H1 in starts):
                    starts.append((pl, Hr))
        for pl, Hr in starts[:GRID_TRIES]:
            res = fit_on_grid(meas, Hr, centres_px, half / k, pitch)
            if res is None:
                continue
            s, fit = score(res[0])
            if s < GOOD_QUICK:
                s2, fit2 = score_refined(res[0])
                if s2 > s:
                    s, fit = s2, fit2
            if s > tried[0][0]:
                why = "did not verify" if best0 < GOOD_QUICK else "only just verified"
                pg = _Placement(res[0], pl.how + " + bubble grid",
                                pl.notes + [f"placement fitted on the printed bubble outlines (the {pl.how} "
                                            f"placement {why})"])
                tried.insert(0, (s, pg, fit))
            if s >= GRID_POLISH or (s >= GOOD_QUICK and best0 < GOOD_QUICK):
                break
        tried.sort(key=lambda e: -e[0])
    timings["align"] = (time.perf_counter() - t0) * 1000
    if not tried:
        exc = failures[0]
        out.error = exc.reason
        out.flag(exc.flag)
        return done()
    tried.sort(key=lambda e: -e[0])
    _, pl, fit = tried[0]
    out.alignment = pl.how
    out.notes += pl.notes

    t0 = time.perf_counter()
    r_mm, outline, r_out = _estimate_radius(meas, fit, t)
    if id(fit) in radius_of:
        r_mm = radius_of[id(fit)]
        _, outline, r_out = _estimate_radius(meas, fit, t, refine_on_bubbles(meas, fit, layout_mm(t, r_mm)))
    lay = layout_mm(t, r_mm)
    page = np.array([[b.x, b.y] for g in lay.groups for b in g.bubbles])
    cen = fit.to_image(page)
    outside = (cen[:, 0] < 0) | (cen[:, 1] < 0) | (cen[:, 0] > w - 1) | (cen[:, 1] > h - 1)
    if outside.any():
        out.flag("cut_off")
        if outside.mean() > CUT_OFF_LIMIT:
            out.error = f"the sheet is cut off: {int(outside.sum())} of {len(cen)} bubbles lie outside the image"
            return done()
    frame = refine_on_bubbles(meas, fit, lay)
    m = bub.measure(meas, frame, fit)
    # Heavy or blurred printed outlines reach into the engine's band: look past
    # where this sheet's outlines fade instead.
    m.circle = _circle_share(meas, frame, fit, m, max(r_out, bub.CIRCLE_RADII[0] * r_mm))
    unfilled = m.score < 0.3
    ring_fit = float(np.mean(m.ring[unfilled] >= bub.RING_MIN)) if unfilled.any() else 0.0
    verified = verify_frame(meas, fit, frame)
    out.orientation = _orientation(fit)
    out.marks_px = fit.marks_px
    out.homography = frame.H @ np.diag([k, k, 1.0])
    blur = _blur_share(meas, frame, m)
    if outline < OUTLINE_MIN or ring_fit < RING_FIT_FAIL or verified < FAIL_FIT:
        if blur is not None and blur > BLUR_FAIL and verified >= 0.45:
            out.error = f"the image is too blurred to read (printed outlines spread over {blur:.0%} of their radius)"
            out.flag("blurred")
            out.flag("misaligned")
        else:
            out.error = (f"the bubbles are not where the template puts them ({verified * 100:.0f} % of outlines "
                         f"centred; page located by {pl.how})")
            out.flag("misaligned")
        timings["bubbles"] = (time.perf_counter() - t0) * 1000
        return done()
    elif ring_fit < RING_FIT_OK or verified < SURE_FIT:
        out.flag("misaligned")
    border = _border_share(meas, fit, t, r_mm, frame.field)
    if border > BORDER_FAIL:
        out.error = (f"the bubbles are placed a row or column off ({border * 100:.0f} % of the places just "
                     f"outside the blocks show a bubble; page located by {pl.how})")
        out.flag("misaligned")
        if blur is not None and blur > BLUR_FAIL and verified >= 0.45:
            out.flag("blurred")
            out.error += "; the image is blurred"
        timings["bubbles"] = (time.perf_counter() - t0) * 1000
        return done()
    if border > BORDER_FLAG:
        out.flag("misaligned")
    if blur is not None and blur > BLUR_FLAG:
        out.flag("blurred")
    if 1.0 - m.ink_ratio < 0.35:
        out.flag("low_contrast")

    levels = bub.sheet_levels(m, frame)
    groups, marked = bub.decide_groups(lay, m, levels)
    _flag_partial_circles(lay, m, groups)
    _answers(out, t, groups)
    out._bubble_data = (lay, np.round(m.score, 3), marked, frame.centres)
    timings["bubbles"] = (time.perf_counter() - t0) * 1000
    return done()


#: A placement whose unrefined bubbles already sit on their outlines this well
#: is taken without trying the others.
GOOD_QUICK = 0.85
#: Rough placements (page outlines, corner namings) the bubble grid is fitted
#: from when no placement verifies.
GRID_TRIES = 5
#: A best placement scoring under this is also fitted on the bubble grid (kept
#: when that scores higher): a placement that only just verifies may still
#: read a few bubbles beside their outlines.
GRID_POLISH = 0.97

_PITCH: dict[int, tuple[OmrCheckerTemplate, float]] = {}


def _pitch(t: OmrCheckerTemplate) -> float:
    """The smallest distance between two bubble centres (page px)."""
    hit = _PITCH.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    c = np.array([c for f in t.fields for c in f.centres()], np.float64)
    best = float(min(t.bubble_w, t.bubble_h))
    for i in range(0, len(c) if len(c) > 1 else 0, 256):
        part = c[i:i + 256]
        d = np.hypot(part[:, None, 0] - c[None, :, 0], part[:, None, 1] - c[None, :, 1])
        d[d < 1e-6] = np.inf  # itself
        best = min(best, float(d.min())) if i else float(d.min())
    _PITCH[id(t)] = (t, best)
    return max(best, 1.0)


def _aspect_error(H: np.ndarray, t: OmrCheckerTemplate) -> float:
    """|log| of how much the page's width/height ratio, as ``H`` (page px ->
    image px) shows it, differs from the template's (perspective makes it
    approximate: ~0 right, ~|log(w/h)| * 2 for a quarter turn misnamed)."""
    c = apply_h(H, _corners(t))
    w = (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3])) / 2
    h = (np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1])) / 2
    if w <= 0 or h <= 0:
        return 9.0
    return abs(math.log((w / h) / (t.page_w / t.page_h)))


def _turn(t: OmrCheckerTemplate, roll: int) -> np.ndarray:
    """Page px -> page px homography renaming the corners by ``roll`` quarter turns."""
    c = _corners(t)
    return cv2.getPerspectiveTransform(c.astype(np.float32), np.roll(c, roll, 0).astype(np.float32)).astype(np.float64)


def _orientation(fit: PageFit) -> int:
    v = fit.marks_px[1] - fit.marks_px[0]
    return int(round((math.degrees(math.atan2(v[1], v[0])) % 360) / 90.0)) % 4 * 90


#: A drawn circle around this share of the free directions, short of what reads
#: as a mark (``bubbles.CIRCLE_MIN``), is doubt: a circle drawn tight against the
#: outline shows only in part.
PARTIAL_CIRCLE = 0.3


def _flag_partial_circles(lay: PageLayout, m: bub.Measures, groups: list[bub.GroupReading]) -> None:
    """Flag ``ambiguous`` a group read blank with a bubble that looks partly
    circled (the engine reads a circle as a mark only when it shows nearly all
    round)."""
    i = 0
    circle = m.circle.tolist()
    for g, gr in zip(lay.groups, groups, strict=True):
        n = len(g.bubbles)
        # Only where nothing is read: beside a clear mark, a filled neighbour's
        # overflow looks like part of a circle too.
        if not gr.marked and any(PARTIAL_CIRCLE <= circle[j] < bub.CIRCLE_MIN for j in range(i, i + n)):
            if "ambiguous" not in gr.flags:
                gr.flags.append("ambiguous")
            gr.confidence = min(gr.confidence, 0.5)
        i += n


def _answers(out: OmrCheckerReading, t: OmrCheckerTemplate, groups: list[bub.GroupReading]) -> None:
    """OMRChecker's response: fields, then custom labels and output columns."""
    by = {g.field: g for g in groups}
    resp: dict[str, str] = {}
    for f in t.fields:
        g = by[f.label]
        resp[f.label] = "".join(g.marked) if g.marked else f.empty_value
    out.fields = resp
    for col in t.output_columns:
        parts = t.custom_labels.get(col, [col])
        out.answers[col] = "".join(resp[p] for p in parts)
        flags: list[str] = []
        blank = [not by[p].marked for p in parts]
        for p in parts:
            for fl in by[p].flags:
                if fl != "blank" and fl not in flags:
                    flags.append(fl)
        if all(blank):
            flags.insert(0, "blank")
        elif len(parts) > 1:
            last = max(i for i, b in enumerate(blank) if not b)
            if any(blank[:last]):
                flags.append("gap")  # a column left blank before or between filled ones
        out.flags[col] = flags
        conf = min(by[p].confidence for p in parts)
        out.confidence[col] = round(min(conf, 0.5) if "gap" in flags else conf, 3)


def read_omrchecker_image_bytes(data: bytes, template: OmrCheckerTemplate, *, source: str = "",
                                max_pixels: int = MAX_PIXELS) -> list[OmrCheckerReading]:
    """Read every page of an image file with an OMRChecker template: one
    ``OmrCheckerReading`` per page; a file that cannot be decoded gives one with
    ``error`` and the sheet flag ``unreadable``. Coordinates are in the file's
    pixels. ``max_pixels``: images larger than this are refused before decoding."""
    def unreadable(error: str) -> OmrCheckerReading:
        return OmrCheckerReading(file=source, template=template.name, error=error, sheet_flags=["unreadable"])

    return read_pages(data, lambda image, name: read_omrchecker_sheet(image, template, source=name), unreadable,
                      source=source, max_pixels=max_pixels)

