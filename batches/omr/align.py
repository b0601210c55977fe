"""Finding the page in an image: registration marks, orientation, homography,
and the refinement on the printed bubble outlines.

Coordinates: the page is measured in millimetres from its top-left corner (the
template's own units); the image in pixels, origin top-left, x right, y down.
``H`` always maps page millimetres to image pixels.

Steps (``page_candidates``, ``locate_page`` takes the first):

1. On a copy shrunk by a power of two to ~480 px, estimate the paper
   brightness everywhere (a max filter over a coarse grid: works under shadows
   and on coloured paper) and keep pixels much darker than their local paper (a
   ratio, so the threshold follows the light; lower contrasts are tried when
   nothing is found).
2. Connected components that are solid, square and convex are mark
   candidates, largest first. Every set of four is scored on what the template
   fixes: a convex quadrilateral through whose homography each mark looks as
   large as perspective makes it there, with the template's proportions.
3. The set is named up to a half turn; the key bar (solid, beside the top-left
   mark only) picks the half turn, measured at full resolution.
4. Each mark's centre is measured again at full resolution (ink-weighted
   centroid; second moments and corners tell a square from a filled bubble),
   giving the homography. Placements are offered best first, so a caller that
   checks them on the bubbles can pass over a wrong set of squares.

``refine_on_bubbles`` then measures where the printed bubble outlines really
are (ray casting from each expected centre) and corrects the marks' plane
homography: a quadratic correction on a flat page; on a curled one a fitted
curl model (a page bent along one axis seen through a pinhole camera), then a
displacement grown outwards from the marks. Curled paper and lens distortion
still land on the bubbles. Bubble outlines that cannot be found where the
template puts them mean the sheet is not this template, or is misaligned:
that is reported, never read through.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from .cache import per_object
from .homography import apply_h
from .imageio import to_grey
from .layout import MM_PER_INCH, PageLayout, page_layout
from .template import Template

#: The mark search runs on a copy whose long side is about this many pixels
#: (marks ~10 px when the page fills the image); larger copies are tried when
#: nothing is found, for photos where the page is small in the frame.
SEARCH_LONG_SIDES = (480, 1000, 2000)
#: Darker than this fraction of the local paper brightness counts as ink; the
#: later values are tried when nothing is found (marks in deep shadow, washed-out
#: photos where black prints as dark grey).
INK_RATIOS = (0.55, 0.72, 0.84)
#: Most candidates kept for the four-mark search (cluttered photos).
MAX_CANDIDATES = 10


class AlignError(Exception):
    """The page could not be located. ``reason`` is a plain sentence, ``flag``
    the sheet flag it leads to (``not_a_sheet``, ``wrong_template``,
    ``misaligned``, ``unreadable``)."""

    def __init__(self, reason: str, flag: str = "not_a_sheet"):
        super().__init__(reason)
        self.reason = reason
        self.flag = flag


@dataclass(frozen=True)
class MarkGeometry:
    """What the mark search needs from a template, in mm."""

    name: str
    centres: np.ndarray  # (4, 2): TL, TR, BR, BL mark centres
    size: float  # mark side
    key: tuple[float, float, float, float]  # x, y, w, h of the key bar
    page: tuple[float, float]  # page width, height

    @classmethod
    def of(cls, template: Template) -> MarkGeometry:
        c = np.array([[m.x, m.y] for m in template.marks], np.float64)
        k = template.key
        return cls(template.name, c, float(np.mean([m.size for m in template.marks])), (k.x, k.y, k.w, k.h),
                   (template.page_width, template.page_height))

    @property
    def width(self) -> float:  # distance between left and right mark centres
        c = self.centres
        return float((np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3])) / 2)

    @property
    def height(self) -> float:
        c = self.centres
        return float((np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1])) / 2)


@dataclass
class PageFit:
    """Where the page is in the image.

    ``H``: 3x3 homography page mm -> image px. ``marks_px``: (4, 2) measured
    mark centres TL, TR, BR, BL in image px. ``orientation``: how the page is
    turned in the image, clockwise degrees (0, 90, 180, 270). ``px_per_mm``:
    mean scale. ``paper``/``ink``: grey levels measured at the marks (ink is
    inside them, paper around them). ``key_contrast``: darkness of the key bar
    relative to paper, 0..1 (1 = as dark as the marks). ``orientation_sure``:
    False when the key bar did not decide, so the caller should confirm the
    orientation (QR code, bubble outlines) using ``alternative``, the fit turned
    180 degrees. ``aspect_error``: for a near-affine (scanner) image, how far
    the page's x/y scale ratio is from 1 (0.03 = 3 %), else None.
    """

    H: np.ndarray
    marks_px: np.ndarray
    orientation: int
    px_per_mm: float
    paper: float
    ink: float
    mark_size_px: float
    key_contrast: float
    orientation_sure: bool
    geometry: MarkGeometry
    background: Background
    aspect_error: float | None = None
    alternative: PageFit | None = None
    search_ms: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_image(self, pts_mm: np.ndarray) -> np.ndarray:
        """Map (N, 2) page mm to (N, 2) image px."""
        return apply_h(self.H, pts_mm)


@dataclass
class Background:
    """The paper's brightness over the image, on a coarse grid.

    ``level`` is float32 on the search copy; ``factor`` is (search px)/(image
    px). Use ``at(points)`` with image px.
    """

    level: np.ndarray
    factor: float

    def at(self, pts: np.ndarray) -> np.ndarray:
        """Paper grey (float32) at (..., 2) image px."""
        h, w = self.level.shape
        x = np.clip((pts[..., 0] * self.factor).astype(np.int32), 0, w - 1)
        y = np.clip((pts[..., 1] * self.factor).astype(np.int32), 0, h - 1)
        return self.level[y, x].astype(np.float32)


def jacobians(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2, 2) derivative of the homography at (N, 2) page points: image px
    per page mm along x and y, so a small page offset ``d`` moves the image
    point by ``J @ d``."""
    pts = np.asarray(pts, np.float64)
    x, y = pts[:, 0], pts[:, 1]
    den = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    u = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / den
    v = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / den
    J = np.empty((len(pts), 2, 2))
    J[:, 0, 0] = (H[0, 0] - u * H[2, 0]) / den
    J[:, 0, 1] = (H[0, 1] - u * H[2, 1]) / den
    J[:, 1, 0] = (H[1, 0] - v * H[2, 0]) / den
    J[:, 1, 1] = (H[1, 1] - v * H[2, 1]) / den
    return J


# ---------------------------------------------------------------- search


def _background(small: np.ndarray) -> np.ndarray:
    """Paper brightness map of the search copy (same size, uint8).

    A max filter over 1/8-size cells: any cell near paper takes the paper's
    level, so solid marks, text and fills (all smaller than a few cells) vanish,
    while shadows and coloured paper (smooth) are kept.
    """
    h, w = small.shape
    cell = 8
    tiny = cv2.resize(small, (max(1, w // cell), max(1, h // cell)), interpolation=cv2.INTER_AREA)
    # A 5x5 cell neighbourhood spans ~40 search px, more than a mark's side.
    tiny = cv2.dilate(tiny, np.ones((5, 5), np.uint8))
    tiny = cv2.blur(tiny, (3, 3))
    return cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class _Candidate:
    x: float
    y: float
    side: float
    area: float
    quality: float


def _candidates(small: np.ndarray, bg: np.ndarray, ratio: float = INK_RATIOS[0],
                limit: int = 28) -> tuple[list[_Candidate], np.ndarray]:
    """Solid square dark blobs in the search copy, at most ``limit`` (the largest)."""
    h, w = small.shape
    # Ink: darker than ``ratio`` of the local paper and by at least 25 levels
    # (uint8 arithmetic saturates, so dark surroundings never wrap around).
    thr = cv2.min(cv2.multiply(bg, ratio, dtype=cv2.CV_8U), cv2.subtract(bg, 25 if ratio < 0.8 else 12))
    # At the lower contrasts, smooth first so sensor noise does not break a mark up.
    src = small if ratio < 0.7 else cv2.GaussianBlur(small, (5, 5), 1.2)
    mask = cv2.compare(src, thr, cv2.CMP_LT)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) // 255  # drops thin strokes
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return [], mask
    st = stats[1:]
    bw, bh, area = st[:, 2].astype(np.float64), st[:, 3].astype(np.float64), st[:, 4].astype(np.float64)
    big = max(h, w) / 6
    ok = (area >= 20) & (bw <= big) & (bh <= big) & (np.maximum(bw, bh) <= 1.9 * np.minimum(bw, bh))
    ok &= area >= 0.42 * bw * bh
    # A solid square (at any angle) covers the middle 40 % of its bounding box
    # entirely; letters, rings and most clutter do not. Counted with an integral
    # image, for all blobs at once.
    ii = cv2.integral(mask)
    x0 = st[:, 0] + np.floor(bw * 0.3).astype(int)
    x1 = st[:, 0] + np.ceil(bw * 0.7).astype(int)
    y0 = st[:, 1] + np.floor(bh * 0.3).astype(int)
    y1 = st[:, 1] + np.ceil(bh * 0.7).astype(int)
    core = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    ok &= core >= 0.93 * np.maximum((x1 - x0) * (y1 - y0), 1)
    keep = np.flatnonzero(ok)
    # Marks are the largest solid blobs of the sheet; filled bubbles are smaller.
    keep = keep[np.argsort(-area[keep])][:limit]
    out: list[_Candidate] = []
    for i in keep:
        x0, y0, ww, hh = st[i, 0], st[i, 1], st[i, 2], st[i, 3]
        roi = (labels[y0:y0 + hh, x0:x0 + ww] == i + 1).astype(np.uint8)
        contours, _ = cv2.findContours(roi, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        cnt = max(contours, key=cv2.contourArea)
        (_, _), (rw, rh), _ = cv2.minAreaRect(cnt)
        if rw < 3 or rh < 3:
            continue
        a = area[i]
        # Pixel-counted area vs the rectangle through pixel centres: add a half pixel rim.
        fill = a / ((rw + 1) * (rh + 1))
        squareness = min(rw, rh) / max(rw, rh)
        hull = cv2.convexHull(cnt)
        solidity = a / max(cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True), 1.0)
        # A filled bubble (disc) fills pi/4 of its rectangle; a mark nearly all of it.
        if fill < 0.8 or squareness < 0.55 or solidity < 0.85:
            continue
        q = min(1.0, (fill - 0.8) / 0.15) * min(1.0, (squareness - 0.55) / 0.3)
        out.append(_Candidate(float(cents[i + 1][0]), float(cents[i + 1][1]), math.sqrt(a), a, q))
    return out, mask



def _batch_homographies(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Homographies (C, 3, 3) taking the 4 points ``src`` (4, 2) to each
    ``dst`` (C, 4, 2), solved together."""
    c = len(dst)
    A = np.zeros((c, 8, 8))
    b = np.zeros((c, 8))
    X, Y = src[:, 0], src[:, 1]
    x, y = dst[..., 0], dst[..., 1]
    A[:, 0::2, 0] = X
    A[:, 0::2, 1] = Y
    A[:, 0::2, 2] = 1
    A[:, 0::2, 6] = -x * X
    A[:, 0::2, 7] = -x * Y
    A[:, 1::2, 3] = X
    A[:, 1::2, 4] = Y
    A[:, 1::2, 5] = 1
    A[:, 1::2, 6] = -y * X
    A[:, 1::2, 7] = -y * Y
    b[:, 0::2] = x
    b[:, 1::2] = y
    A += np.eye(8) * 1e-9
    h = np.linalg.solve(A, b[..., None])[..., 0]
    return np.concatenate([h, np.ones((c, 1))], 1).reshape(c, 3, 3)


def _scales_at(Hs: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """sqrt(|det J|) (image px per page mm) of each homography (C, 3, 3) at
    each page point (P, 2): (C, P)."""
    X, Y = pts[None, :, 0], pts[None, :, 1]
    h = Hs.reshape(len(Hs), 9)[:, :, None]
    den = h[:, 6] * X + h[:, 7] * Y + h[:, 8]
    u = (h[:, 0] * X + h[:, 1] * Y + h[:, 2]) / den
    v = (h[:, 3] * X + h[:, 4] * Y + h[:, 5]) / den
    j00 = (h[:, 0] - u * h[:, 6]) / den
    j01 = (h[:, 1] - u * h[:, 7]) / den
    j10 = (h[:, 3] - v * h[:, 6]) / den
    j11 = (h[:, 4] - v * h[:, 7]) / den
    return np.sqrt(np.abs(j00 * j11 - j01 * j10))


def _quads(cands: list[_Candidate], geoms: list[MarkGeometry]) -> list[tuple[float, np.ndarray, MarkGeometry]]:
    """Four-candidate sets that fit a template's mark geometry, best first.

    For each convex set and each of its two namings (which pair of sides is
    the page's width), the homography through the four centres predicts how
    large each mark must look where it is (perspective makes near marks
    larger): the candidates' measured sizes must agree. Returns (error,
    indices in clockwise order starting at the corner named top-left, up to a
    half turn, geometry); lower error is better.
    """
    n = len(cands)
    if n < 4:
        return []
    xy = np.array([[c.x, c.y] for c in cands])
    side = np.array([c.side for c in cands])
    qual = np.array([c.quality for c in cands])
    combos = np.array(list(itertools.combinations(range(n), 4)))
    pts = xy[combos]  # (C, 4, 2)
    cen = pts.mean(1, keepdims=True)
    ang = np.arctan2(pts[..., 1] - cen[..., 1], pts[..., 0] - cen[..., 0])
    combos = np.take_along_axis(combos, np.argsort(ang, 1), 1)
    pts = xy[combos]
    d1 = pts - np.roll(pts, 1, 1)
    d2 = np.roll(pts, -1, 1) - pts
    cross = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]
    convex = np.all(cross > 0, 1) | np.all(cross < 0, 1)
    ms = side[combos]
    sides = np.linalg.norm(pts - np.roll(pts, -1, 1), axis=2)
    # Cheap tests before any homography: marks of like size (perspective makes
    # the near ones at most ~2.6 times the far ones), opposite sides alike.
    spread = ms.max(1) / np.maximum(ms.min(1), 1e-6)
    opp = np.minimum(np.minimum(sides[:, 0], sides[:, 2]) / np.maximum(sides[:, 0], sides[:, 2]),
                     np.minimum(sides[:, 1], sides[:, 3]) / np.maximum(sides[:, 1], sides[:, 3]))
    # A mark is small beside the page: its side against the quad's mean side.
    rel = ms.mean(1) / np.maximum(sides.mean(1), 1e-6)
    g_rel = [g.size / ((g.width + g.height) / 2) for g in geoms]
    keep = convex & (spread < 2.8) & (opp > 0.35) & (rel > 0.5 * min(g_rel)) & (rel < 2.0 * max(g_rel))
    combos, pts, ms, sides = combos[keep], pts[keep], ms[keep], sides[keep]
    if len(combos) == 0:
        return []
    out = []
    for g in geoms:
        ratio = g.width / g.height
        for shift in (0, 1):
            order = np.roll(np.arange(4), -shift)
            p = pts[:, order]
            Hs = _batch_homographies(g.centres, p)
            expect = _scales_at(Hs, g.centres) * g.size  # (C, 4) px
            m = ms[:, order]
            # Blobs measured on the shrunk copy come out a little small or large
            # with blur: a constant factor is allowed, the rest must agree.
            lr = np.log(m / np.maximum(expect, 1e-6))
            bias = np.median(lr, 1)
            size_err = np.abs(lr - bias[:, None]).max(1)
            sc = expect / g.size
            persp = sc.max(1) / np.maximum(sc.min(1), 1e-9)
            s = sides[:, order]
            aspect = ((s[:, 0] + s[:, 2]) / 2) / np.maximum((s[:, 1] + s[:, 3]) / 2, 1e-6)
            aspect_err = np.abs(np.log(aspect / ratio))
            ok = (size_err < 0.3) & (np.abs(bias) < 0.4) & (persp < 2.6) & (aspect_err < 0.6)
            for i in np.flatnonzero(ok):
                err = 2.0 * size_err[i] + 0.5 * abs(bias[i]) + 0.3 * aspect_err[i] + 0.15 * np.log(persp[i])
                err += 0.2 * (1 - qual[combos[i]].min())
                out.append((float(err), combos[i][order], g))
    out.sort(key=lambda t: t[0])
    return out


def _sample_mean(img: np.ndarray, H: np.ndarray, rect: tuple[float, float, float, float], shrink: float = 0.25,
                 n: int = 7) -> float:
    """Mean grey of a page rectangle (mm, inner part) through H, nearest sampling."""
    x, y, w, h = rect
    xs = x + w * (shrink + (1 - 2 * shrink) * (np.arange(n) + 0.5) / n)
    ys = y + h * (shrink + (1 - 2 * shrink) * (np.arange(n) + 0.5) / n)
    pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    p = apply_h(H, pts)
    hh, ww = img.shape[:2]
    px = np.clip(np.round(p[:, 0]).astype(int), 0, ww - 1)
    py = np.clip(np.round(p[:, 1]).astype(int), 0, hh - 1)
    return float(img[py, px].astype(np.float32).mean())



def _h_from_marks(g: MarkGeometry, marks_px: np.ndarray) -> np.ndarray:
    return cv2.getPerspectiveTransform(g.centres.astype(np.float32), marks_px.astype(np.float32)).astype(np.float64)


@lru_cache(maxsize=32)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return xx, yy


def _refine_mark(grey: np.ndarray, x: float, y: float, side: float) -> tuple[float, float, float, float, float] | None:
    """Measure one mark at full resolution near (x, y) with expected ``side`` px.

    Ink-weighted centroid inside a disc of 0.85 sides around the estimate
    (holds the whole square at any angle, and never reaches the key bar), twice
    if the first moved it much. Returns (cx, cy, side_px, ink grey, paper grey),
    or None when no solid square is there.
    """
    h, w = grey.shape
    rad = side * 0.85
    half = int(math.ceil(rad)) + 1
    size = 2 * half + 1
    gx, gy = _grid(size)
    for _ in range(2):
        ix, iy = int(round(x)), int(round(y))
        x0, y0 = ix - half, iy - half
        if x0 < 0 or y0 < 0 or x0 + size > w or y0 + size > h:
            return None  # a mark cut by the image edge cannot be measured
        patch = grey[y0:y0 + size, x0:x0 + size].astype(np.float32)
        dx, dy = gx - (x - x0), gy - (y - y0)
        r2 = dx * dx + dy * dy
        inside = r2 <= rad * rad
        vals = patch[inside]
        kl, kh = int(0.04 * (len(vals) - 1)), int(0.96 * (len(vals) - 1))
        part = np.partition(vals, (kl, kh))
        lo, hi = float(part[kl]), float(part[kh])
        if hi - lo < 25:
            return None
        # Soft ink weight: 0 at paper, 1 at the mark's own black; the small
        # offset keeps paper noise out of the centroid.
        wts = np.clip((hi - patch) * (1.25 / (hi - lo)) - 0.125, 0.0, 1.0)
        wts[~inside] = 0
        m = cv2.moments(wts)
        tot = m["m00"]
        if tot <= 0:
            return None
        nx, ny = x0 + m["m10"] / tot, y0 + m["m01"] / tot  # image px, pixel centres at whole numbers
        moved = math.hypot(nx - x, ny - y)
        x, y = nx, ny
        # The disc holds the whole square for any error under 0.14 sides, and the
        # centroid is then exact; only a larger move calls for a second look.
        if moved < 0.08 * side:
            break
    side_px = math.sqrt(tot)
    # A square of side a has a second moment a^2/12 about each axis through its
    # centre (any rotation): far from that, it is not a solid square.
    spread = math.sqrt(6 * (m["mu20"] + m["mu02"]) / tot)  # = a for a solid square
    if not 0.75 < spread / max(side_px, 1e-6) < 1.3 or not 0.55 < side_px / side < 1.6:
        return None
    # Corners: a square has ~7 % of its ink beyond 0.58 sides from its centre, a
    # disc (a filled bubble) almost none.
    cx, cy = x - x0, y - y0
    far = ((gx - cx) ** 2 + (gy - cy) ** 2) > (0.58 * side_px) ** 2
    if float(wts[far].sum()) / tot < 0.035:
        return None
    core = wts > 0.9
    ink = float(np.median(patch[core])) if core.any() else lo
    return x, y, side_px, ink, hi


def locate_page(image: np.ndarray, geometries: list[MarkGeometry]) -> PageFit:
    """Find the page of one of ``geometries`` (one per candidate template
    shape, tried together) in a grey or colour ``image``.

    Returns the most likely ``PageFit`` (homography page mm -> image px); see
    ``page_candidates`` for the others. Raises ``AlignError`` ("registration
    marks not found", or why the marks found do not fit).
    """
    for fit in page_candidates(image, geometries):
        return fit
    raise AlignError("registration marks not found")  # not reached: the generator raises


def page_candidates(image: np.ndarray, geometries: list[MarkGeometry], *, limit: int = 6):
    """Every plausible placement of the page, most likely first (a generator
    of ``PageFit``, at most ``limit``).

    A caller that can check a placement (printed bubble outlines where the
    template puts them) takes the first that passes; a wrong set of four
    squares that happens to fit (filled bubbles, clutter, marks lost in a
    shadow) is then passed over. Raises ``AlignError`` when it has nothing (more)
    to offer and offered nothing.
    """
    grey = to_grey(image)
    h, w = grey.shape
    if min(h, w) < 100:
        raise AlignError(f"image is too small to read ({w} x {h} pixels)", "unreadable")
    sparse = grey[::9, ::9]
    if int(np.percentile(sparse, 99.5)) - int(np.percentile(sparse, 0.5)) < 30:
        raise AlignError("image is blank (one uniform colour, nothing printed)", "unreadable")
    failure = ["registration marks not found (fewer than four corner squares visible)"]
    given = 0
    seen: list[np.ndarray] = []
    tried: set[int] = set()
    for long_side in SEARCH_LONG_SIDES:
        # A power-of-two shrink: halving with INTER_AREA is a fast SIMD path
        # (a single 1/4 or 1/3 INTER_AREA costs several times more).
        k = 2 ** max(0, round(math.log2(max(1.0, max(h, w) / long_side))))
        if k in tried:
            break
        tried.add(k)
        for fit in _locate(grey, geometries, 1.0 / k, failure):
            # The same marks found again at another scale or threshold: skip.
            if any(np.abs(fit.marks_px - m).max() < 0.5 * fit.mark_size_px for m in seen):
                continue
            seen.append(fit.marks_px)
            given += 1
            yield fit
            if given >= limit:
                return
        if k == 1:
            break
    if not given:
        raise AlignError(failure[0])


def _locate(grey: np.ndarray, geometries: list[MarkGeometry], factor: float, failure: list[str]):
    h, w = grey.shape
    k = round(1.0 / factor)
    small = grey
    if k > 1:
        hh, ww = (h // k) * k, (w // k) * k  # whole cells, so the factor is exact
        small = grey[:hh, :ww]
        while small.shape[0] > hh // k:
            small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_AREA)
    bg = _background(small)
    pending: list[tuple[float, PageFit]] = []
    for ratio in INK_RATIOS:
        # The few largest blobs first (a clean sheet's marks are among them);
        # the shape checks on more only when those do not make a page.
        for limit in (12, 28):
            cands, _ = _candidates(small, bg, ratio, limit)
            if len(cands) < 4:
                break
            given = False
            # The marks are the largest solid squares of a sheet (filled bubbles
            # are smaller discs); in a cluttered photo larger squares may exist,
            # so the search slides down the size order in overlapping windows.
            cands.sort(key=lambda c: -c.area)
            windows = [cands[i:i + MAX_CANDIDATES] for i in range(0, max(1, len(cands) - 3), MAX_CANDIDATES - 4)][:5]
            failure[0] = "registration marks not found (no four squares form the page's corners)"
            # On a clean sheet the four largest solid squares are the marks: one
            # set to test before any search.
            first = [cands[:4]] if len(cands) > 4 else []
            for window in first + windows:
                quads = [(err, [window[i] for i in idx], g) for err, idx, g in _quads(window, geometries)[:4]]
                for err, chosen, g in quads:
                    try:
                        fit = _finish(grey, small, bg, factor, chosen, g, err)
                    except AlignError as exc:
                        failure[0] = exc.reason
                        continue
                    # The key bar is strong evidence: a clean fit with a clear key
                    # goes out at once; otherwise the placements found are ranked
                    # on both before any is offered.
                    if err < 0.3 and fit.orientation_sure and fit.key_contrast > 0.6:
                        given = True
                        yield fit
                        continue
                    pending.append((err - 0.6 * min(fit.key_contrast, 1.0), fit))
            if given or len(cands) < limit:
                break
    pending.sort(key=lambda p: p[0])
    for _, fit in pending:
        yield fit


def _finish(grey: np.ndarray, small: np.ndarray, bg: np.ndarray, s: float, chosen: list[_Candidate],
            g: MarkGeometry, err: float) -> PageFit:
    """Name the corners of one candidate quad, measure its marks at full
    resolution and build the fit; ``AlignError`` when they are not marks."""
    # ``chosen`` is named up to a half turn; the key bar (beside the top-left
    # mark only) tells which, once the marks are measured at full resolution.
    pts_small = np.array([[c.x, c.y] for c in chosen])
    # Full-resolution centres of the four marks.
    expect_side = float(np.mean([c.side for c in chosen])) / s
    marks = []
    inks, papers, sides = [], [], []
    for px_, py_ in (pts_small + 0.5) / s - 0.5:  # small pixel centre -> image pixel centre
        r = _refine_mark(grey, px_, py_, expect_side)
        if r is None:
            raise AlignError("registration marks not found (a corner mark is damaged, cut off or not square)")
        marks.append((r[0], r[1]))
        sides.append(r[2])
        inks.append(r[3])
        papers.append(r[4])
    marks_px = np.array(marks)
    H = _h_from_marks(g, marks_px)
    bg_full = Background(bg, s)
    alt_pts = np.roll(marks_px, -2, 0)
    H_alt = _h_from_marks(g, alt_pts)
    key_full = _key_darkness_full(grey, bg_full, H, g)
    key_alt = _key_darkness_full(grey, bg_full, H_alt, g)
    if key_alt > key_full:
        marks_px, alt_pts, H, H_alt, key_full, key_alt = alt_pts, marks_px, H_alt, H, key_alt, key_full
        inks, papers, sides = inks[2:] + inks[:2], papers[2:] + papers[:2], sides[2:] + sides[:2]
    J = jacobians(H, g.centres)
    scale = np.sqrt(np.abs(np.linalg.det(J)))
    # The measured side of each mark against the side the homography implies.
    side_ratio = np.array(sides) / (scale * g.size)
    if np.any(side_ratio < 0.72) or np.any(side_ratio > 1.38):
        raise AlignError(f"registration marks not found (corner squares of the wrong size for {g.name})")
    v = marks_px[1] - marks_px[0]
    angle = math.degrees(math.atan2(v[1], v[0])) % 360
    orientation = int(round(angle / 90.0)) % 4 * 90
    # A scanner keeps x and y scales equal; with little perspective the page's
    # aspect ratio is measurable, and tells apart page sizes with the same marks.
    aspect_error = None
    Hn = H / H[2, 2]
    persp = float(np.hypot(Hn[2, 0], Hn[2, 1]) * max(g.page))
    if persp < 0.01:
        sx = float(np.linalg.norm(Hn[:2, 0]))
        sy = float(np.linalg.norm(Hn[:2, 1]))
        aspect_error = abs(math.log(sx / sy))
    ink_ratio = float(np.median(np.array(inks) / np.maximum(np.array(papers), 1)))
    sure = key_full > 0.35 and key_full - key_alt > 0.25
    fit = PageFit(H=H, marks_px=marks_px, orientation=orientation, px_per_mm=float(scale.mean()),
                  paper=float(np.median(papers)), ink=float(np.median(inks)),
                  mark_size_px=float(np.mean(sides)), key_contrast=key_full / max(1 - ink_ratio, 0.2),
                  orientation_sure=sure, geometry=g, background=bg_full, aspect_error=aspect_error)
    if not sure:
        v2 = alt_pts[1] - alt_pts[0]
        o2 = int(round((math.degrees(math.atan2(v2[1], v2[0])) % 360) / 90.0)) % 4 * 90
        fit.alternative = PageFit(H=H_alt, marks_px=alt_pts, orientation=o2, px_per_mm=fit.px_per_mm,
                                  paper=fit.paper, ink=fit.ink, mark_size_px=fit.mark_size_px,
                                  key_contrast=key_alt / max(1 - ink_ratio, 0.2), orientation_sure=False,
                                  geometry=g, background=bg_full, aspect_error=aspect_error)
    return fit


def _key_darkness_full(grey: np.ndarray, bg: Background, H: np.ndarray, g: MarkGeometry) -> float:
    x, y, w, h = g.key
    if w <= 0 or h <= 0:
        return 0.0
    mean = _sample_mean(grey, H, g.key, shrink=0.2, n=9)
    centre = apply_h(H, np.array([[x + w / 2, y + h / 2]]))
    paper = float(bg.at(centre)[0])
    return max(0.0, 1.0 - mean / max(paper, 1.0))


# ---------------------------------------------------------------- bubble refinement


@dataclass
class BubbleFrame:
    """Where every bubble of a layout is in the image.

    ``centres``: (N, 2) image px, in ``layout.bubbles`` order; ``J``: (N, 2, 2)
    image px per page mm at each bubble; ``r_mm``: bubble radius in mm.
    ``ring``: (N,) how clearly the printed outline was seen at the final
    position (fraction of directions where it shows; NaN where the bubble is
    filled, so its outline cannot be told from the fill). ``fit_rms_mm``: RMS
    distance between the outlines found and the model, mm. ``shift_mm``: the
    largest correction applied relative to the marks-only homography.
    """

    centres: np.ndarray
    J: np.ndarray
    r_mm: float
    H: np.ndarray
    page_mm: np.ndarray
    ring: np.ndarray | None = None
    fit_rms_mm: float = 0.0
    shift_mm: float = 0.0
    used: int = 0
    found_share: float = 0.0  # outlines found / bubbles looked at that were not filled
    field: object = None  # page mm (N, 2) -> displacement (N, 2) mm, or None for none

    def corrected_h(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """A homography page mm -> image px that follows the measured
        displacement over page rectangle ``box`` (x, y, w, h mm): for cutting
        out the QR code of a curled page."""
        if self.field is None:
            return self.H
        x, y, w, h = box
        corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        moved = apply_h(self.H, corners + self.field(corners))
        return cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32)).astype(np.float64)


@per_object
def bubble_centres_mm(lay: PageLayout) -> np.ndarray:
    """(N, 2) bubble centres of a layout in ``layout.bubbles`` order (cached)."""
    arr = np.array([[b.x, b.y] for g in lay.groups for b in g.bubbles], np.float64).reshape(-1, 2)
    arr.setflags(write=False)
    return arr


def layout_mm(template: Template, page: int) -> PageLayout:
    """The page's layout in millimetres (``page_layout`` at 25.4 dpi)."""
    return page_layout(template, page, MM_PER_INCH)


# Ray casting: directions and radii (fractions of the bubble radius).
_N_ANGLES = 24
_ANGLES = np.arange(_N_ANGLES) * (2 * np.pi / _N_ANGLES)
_DIRS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], -1)  # (A, 2)


def ray_profiles(grey: np.ndarray, centres: np.ndarray, J: np.ndarray, radii_mm: np.ndarray,
                 dirs: np.ndarray = _DIRS) -> np.ndarray:
    """Grey values along rays: (N, A, R) for N bubbles, A directions, R radii."""
    return sample_offsets(grey, centres, J, dirs[:, None, :] * radii_mm[None, :, None])


def sample_offsets(grey: np.ndarray, centres: np.ndarray, J: np.ndarray, offsets_mm: np.ndarray) -> np.ndarray:
    """Grey values (bilinear) at page-mm ``offsets_mm`` (..., 2) around each of
    N bubbles, through each bubble's local Jacobian: (N, ...) float32. Points
    outside the image read as white paper."""
    shape = offsets_mm.shape[:-1]
    off = offsets_mm.reshape(-1, 2).astype(np.float32)
    c = centres.astype(np.float32)
    J = J.astype(np.float32)
    x = c[:, 0, None] + J[:, 0, 0, None] * off[None, :, 0] + J[:, 0, 1, None] * off[None, :, 1]
    y = c[:, 1, None] + J[:, 1, 0, None] * off[None, :, 0] + J[:, 1, 1, None] * off[None, :, 1]
    # cv2.remap is one C pass over all the points.
    out = cv2.remap(grey, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    return out.astype(np.float32).reshape((len(centres),) + shape)


def _ring_offsets(prof: np.ndarray, radii: np.ndarray, paper: np.ndarray, r: float,
                  dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimate each bubble's outline centre offset from its ray profiles.

    ``prof`` (N, A, R) grey along rays going out from the expected centre,
    ``paper`` (N,) local paper grey. Each ray's *first* clear darkening is
    where it crosses this bubble's own outline (a neighbour's outline can only
    come later), so the capture range is most of the radius. A circle fit
    ``rho(a) = r' + dx cos a + dy sin a`` over the rays gives the offset.
    Returns (offsets (N, 2) mm, NaN where the outline was not found; fit
    residual (N,) mm).
    """
    n, a, nr = prof.shape
    depth = (paper[:, None, None] - prof) / np.maximum(paper[:, None, None], 1.0)
    sm = depth.copy()
    sm[..., 1:-1] = (depth[..., :-2] + 2 * depth[..., 1:-1] + depth[..., 2:]) / 4
    peak = sm.max(2)
    # Blur and camera shake leave a thin printed outline only ~0.1-0.2 darker
    # than the paper: the half-peak crossing finds it at any contrast.
    thr = np.maximum(0.05, 0.5 * peak)
    above = sm > thr[..., None]
    has = above.any(2) & (peak > 0.08)
    first = np.argmax(above, axis=2)
    # The outline's darkest point: the maximum within a few steps after the crossing.
    win = 4
    cols = np.clip(first[..., None] + np.arange(win), 0, nr - 1)
    vals = np.take_along_axis(sm, cols, 2)
    idx = np.take_along_axis(cols, np.argmax(vals, 2)[..., None], 2)[..., 0]
    i0 = np.clip(idx, 1, nr - 2)
    g = lambda k: np.take_along_axis(sm, k[..., None], 2)[..., 0]  # noqa: E731
    ya, yb, yc = g(i0 - 1), g(i0), g(i0 + 1)
    den = ya - 2 * yb + yc
    frac = np.where(den < -1e-4, 0.5 * (ya - yc) / np.where(den < -1e-4, den, -1.0), 0.0)
    step = radii[1] - radii[0]
    rho = radii[i0] + np.clip(frac, -0.5, 0.5) * step
    wts = has.astype(np.float64)
    A = np.stack([np.ones(a), dirs[:, 0], dirs[:, 1]], -1)  # (A, 3)
    AA = (A[:, :, None] * A[:, None, :]).reshape(a, 9)
    out = np.full((n, 2), np.nan)
    resid = np.full(n, np.inf)
    need = max(6, int(0.45 * a))
    for _ in range(3):  # later passes drop rays far off the circle (strokes inside, clutter)
        AtWA = (wts @ AA).reshape(-1, 3, 3) + np.eye(3) * 1e-6
        AtWy = (wts * rho) @ A
        sol = np.linalg.solve(AtWA, AtWy[..., None])[..., 0]
        err = np.abs(rho - sol @ A.T)
        cnt = wts.sum(1)
        resid = np.where(cnt >= need, np.sqrt((wts * err ** 2).sum(1) / np.maximum(cnt, 1)), np.inf)
        wts = wts * (err < max(0.1 * r, 0.2))
        out = sol[:, 1:].copy()
        # The fitted radius must be the printed one: anything else is not this outline.
        out[np.abs(sol[:, 0] - r) > 0.2 * r] = np.nan
    out[wts.sum(1) < need] = np.nan
    return out, resid


def _sampled_subset(lay: PageLayout) -> np.ndarray:
    """Bubbles used to measure the outlines: spread over every group."""
    idx = []
    i = 0
    for g in lay.groups:
        n = len(g.bubbles)
        if g.kind == "digit":
            picks = range(0, n, 3)
        else:
            picks = range(0, n, 2) if n > 3 else range(n)
        idx.extend(i + j for j in picks)
        i += n
    return np.array(idx, dtype=np.int64)


def _local_fit(q: np.ndarray, ku: np.ndarray, kd: np.ndarray, kw: np.ndarray, sigma: float) -> np.ndarray:
    """Displacement at page points ``q`` (Q, 2) from known ones (``ku`` page
    mm, ``kd`` displacement, ``kw`` weight): Gaussian-weighted local linear
    regression (a moving least-squares plane per point, its slope held back by
    a ridge so a few points far away do not tilt it wildly)."""
    if len(ku) == 0:
        return np.zeros((len(q), 2))
    dx = ku[None, :, 0] - q[:, None, 0]  # (Q, K), centred on each query
    dy = ku[None, :, 1] - q[:, None, 1]
    w = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) * kw[None, :] + 1e-12
    s0 = w.sum(1)
    sx, sy = (w * dx).sum(1), (w * dy).sum(1)
    sxx, sxy, syy = (w * dx * dx).sum(1), (w * dx * dy).sum(1), (w * dy * dy).sum(1)
    ridge = s0 * (sigma * sigma) * 0.01
    M = np.empty((len(q), 3, 3))
    M[:, 0, 0], M[:, 0, 1], M[:, 0, 2] = s0, sx, sy
    M[:, 1, 0], M[:, 1, 1], M[:, 1, 2] = sx, sxx + ridge, sxy
    M[:, 2, 0], M[:, 2, 1], M[:, 2, 2] = sy, sxy, syy + ridge
    rhs = np.stack([w @ kd, (w * dx) @ kd, (w * dy) @ kd], 1)  # (Q, 3, 2)
    sol = np.linalg.solve(M, rhs)
    return sol[:, 0, :]  # the plane's value at the query point


_DIRS16 = np.stack([np.cos(np.arange(16) * np.pi / 8), np.sin(np.arange(16) * np.pi / 8)], -1)


@lru_cache(maxsize=64)
def _probe_indices(key: tuple) -> np.ndarray:
    """A sparse, even spread of bubbles for the quick check: the first and last
    bubble of every other group."""
    sizes = np.array(key)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    idx = []
    for gi, (s0, n) in enumerate(zip(starts, sizes, strict=True)):
        if gi % 2 == 0 or n <= 2:
            idx.append(s0)
            if n > 1:
                idx.append(s0 + n - 1)
    return np.array(sorted(set(idx)), dtype=np.int64)


def _quick_fit(grey: np.ndarray, fit: PageFit, lay: PageLayout, page: np.ndarray,
               r: float) -> tuple[np.ndarray, float, int] | None:
    """The common case, cheaply: the page is flat enough that the marks'
    homography is within a fraction of a millimetre everywhere. Looks for a
    sparse spread of outlines near their flat position and, when nearly all are
    found close by and agree with a gentle global correction (a quadratic
    field pinned at the marks), returns (displacement per bubble (N, 2) mm,
    share found, number used). None sends the caller to the full search."""
    idx = _probe_indices(tuple(len(g.bubbles) for g in lay.groups))
    if len(idx) < 12:
        return None
    u = page[idx]
    c = apply_h(fit.H, u)
    radii = np.linspace(0.5 * r, 1.5 * r, 13)
    prof = ray_profiles(grey, c, jacobians(fit.H, u), radii, _DIRS16)
    paper = fit.background.at(c)
    inner = prof[..., :2].mean((1, 2))
    filled = (paper - inner) / np.maximum(paper, 1) > 0.18
    off, resid = _ring_offsets(prof, radii, paper, r, _DIRS16)
    ok = ~np.isnan(off[:, 0]) & ~filled & (resid < 0.12 * r + 0.1)
    looked = int((~filled).sum())
    if ok.sum() < max(12, 0.8 * looked):
        return None
    mag = np.linalg.norm(off[ok], axis=1)
    if float(np.percentile(mag, 90)) > 0.6:
        return None
    size = fit.geometry.page
    src = np.vstack([u[ok], fit.geometry.centres])
    y = np.vstack([off[ok], np.zeros((4, 2))])
    B = _basis(src, size, 2)
    w = np.concatenate([np.ones(int(ok.sum())), np.full(4, 10.0)])
    coef = np.zeros((B.shape[1], 2))
    for _ in range(3):  # Cauchy-reweighted: a stray stroke inside one bubble does not bend the page
        Bw = B * w[:, None]
        coef = np.linalg.solve(Bw.T @ B + np.eye(B.shape[1]) * 1e-3, Bw.T @ y)
        res = np.linalg.norm(y - B @ coef, axis=1)
        w = np.concatenate([1.0 / (1.0 + (res[:-4] / 0.12) ** 2), np.full(4, 10.0)])
    res_obs = res[:-4]
    if float(np.mean(res_obs < 0.2)) < 0.85:
        return None
    return (lambda q: _basis(q, size, 2) @ coef), float(ok.sum()) / max(1, looked), int(ok.sum())


def _basis(u: np.ndarray, size: tuple[float, float], degree: int) -> np.ndarray:
    """Polynomial basis in page coordinates scaled to [-1, 1]: (N, terms)."""
    x = u[:, 0] / size[0] * 2 - 1
    y = u[:, 1] / size[1] * 2 - 1
    cols = [x ** i * y ** j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols, -1)


def _camera_from_h(H: np.ndarray, shape: tuple[int, int], f: float | None = None
                   ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
    """A pinhole camera consistent with the page homography: principal point at
    the image centre, square pixels, focal length from the homography's two
    rotation constraints (a typical phone's when they do not tell). Returns
    (f, R, t, c) with image = c + f * (R @ X + t)[:2] / (R @ X + t)[2] for page
    points X = (x, y, z) mm, z towards the camera; None when H is degenerate."""
    h, w = shape
    c = np.array([w / 2.0, h / 2.0])
    T = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1]], np.float64)
    Hc = T @ H
    h1, h2 = Hc[:, 0], Hc[:, 1]
    est = []
    den1 = h1[2] * h2[2]
    if abs(den1) > 1e-12:
        f2 = -(h1[0] * h2[0] + h1[1] * h2[1]) / den1
        if f2 > 0:
            est.append(f2)
    den2 = h1[2] ** 2 - h2[2] ** 2
    if abs(den2) > 1e-12:
        f2 = -(h1[0] ** 2 + h1[1] ** 2 - h2[0] ** 2 - h2[1] ** 2) / den2
        if f2 > 0:
            est.append(f2)
    typical = 0.74 * max(h, w)  # a 26 mm-equivalent phone lens
    if f is None:
        f = float(np.sqrt(np.median(est))) if est else typical
        if not 0.3 * typical < f < 4 * typical:
            f = typical
    Ki = np.diag([1 / f, 1 / f, 1.0])
    a1, a2, a3 = Ki @ h1, Ki @ h2, Ki @ Hc[:, 2]
    lam = (np.linalg.norm(a1) + np.linalg.norm(a2)) / 2
    if lam <= 0:
        return None
    r1, r2 = a1 / lam, a2 / lam
    t = a3 / lam
    if t[2] < 0:  # the page must be in front of the camera
        r1, r2, t = -r1, -r2, -t
    r3 = np.cross(r1, r2)
    R = np.stack([r1, r2, r3], 1)
    return f, R, t, c


def _lift_model(fit: PageFit, shape: tuple[int, int], f: float | None = None):
    """Displacement (page mm, in the flat homography's frame) of page points
    lifted off the plane of the marks by a curl ``z = a (u^2 - um^2)(1 + b v)``
    along ``axis`` (u, v: page coordinates scaled to [-1, 1]; um: the marks'
    u), seen through the camera of ``_camera_from_h``. Returns a function
    ``(u_mm (N, 2), axis, a, b) -> (N, 2)`` or None."""
    cam = _camera_from_h(fit.H, shape, f)
    if cam is None:
        return None
    f, R, t, c = cam
    pw, ph = fit.geometry.page
    marks = fit.geometry.centres
    Hinv = np.linalg.inv(fit.H)

    def model(u: np.ndarray, axis: int, a: float, b: float) -> np.ndarray:
        size = (pw, ph)
        q = u[:, axis] / size[axis] * 2 - 1
        v = u[:, 1 - axis] / size[1 - axis] * 2 - 1
        qm = float(np.mean(np.abs(marks[:, axis] / size[axis] * 2 - 1)))
        z = a * (q * q - qm * qm) * (1 + b * v)
        X = np.stack([u[:, 0], u[:, 1], z], 1)
        P = X @ R.T + t
        img = c + f * P[:, :2] / P[:, 2:3]
        return apply_h(Hinv, img) - u

    return model


def _ring_evidence(grey: np.ndarray, H: np.ndarray, u: np.ndarray, paper: np.ndarray, r: float,
                   dirs: np.ndarray | None = None) -> np.ndarray:
    """How much each bubble's printed outline shows as a circle centred where
    it is expected: darkness on the circle minus darkness inside and outside
    it (per bubble, darkness units)."""
    radii = np.array([0.55, 0.88, 1.0, 1.12, 1.5]) * r
    prof = ray_profiles(grey, apply_h(H, u), jacobians(H, u), radii, _DIRS12 if dirs is None else dirs)
    d = (paper[:, None, None] - prof) / np.maximum(paper[:, None, None], 1.0)
    on = np.maximum(np.maximum(d[..., 1], d[..., 2]), d[..., 3])  # max over the outline's radii
    off = 0.5 * (d[..., 0] + d[..., 4])
    return (on - np.maximum(off, 0.0)).mean(1)


_DIRS8 = np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], -1)
_DIRS12 = np.stack([np.cos(np.arange(12) * np.pi / 6), np.sin(np.arange(12) * np.pi / 6)], -1)


_NEAREST: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def nearest_neighbour_mm(page: np.ndarray) -> np.ndarray:
    """(N,) distance from each bubble centre to the nearest other one, mm
    (cached per array: layouts are cached, so this runs once per template)."""
    hit = _NEAREST.get(id(page))
    if hit is not None and hit[0] is page:
        return hit[1]
    n = len(page)
    out = np.full(n, 10.0)
    if n > 1:
        for s0 in range(0, n, 256):  # in blocks: bounded memory for big layouts
            d2 = ((page[s0:s0 + 256, None, :] - page[None, :, :]) ** 2).sum(-1)
            d2[np.arange(len(d2)), np.arange(s0, s0 + len(d2))] = np.inf
            out[s0:s0 + 256] = np.sqrt(d2.min(1))
    if len(_NEAREST) > 64:
        _NEAREST.clear()
    _NEAREST[id(page)] = (page, out)
    return out


def verify_frame(grey: np.ndarray, fit: PageFit, frame: BubbleFrame, step: int = 2) -> float:
    """How surely the bubbles are where ``frame`` reads them (0..1).

    For every ``step``-th bubble, the printed outline's evidence (darkness on
    the circle minus inside and outside) where it is read is compared with the
    same measure half way to the nearest neighbour to the left, right, above and
    below (1-1.5 radii): on a
    right placement the read position wins for nearly every bubble (~1.0),
    on a wrong one (the wrong four squares taken for marks, another layout)
    for about a third of them, whatever the sheet's noise and contrast.
    """
    if len(frame.page_mm) == 0:
        return 0.0
    pts = frame.page_mm[::step]
    if frame.field is not None:
        pts = pts + frame.field(pts)
    n = len(pts)
    # Half way to the nearest neighbour (a neighbour's outline must not be
    # what the shifted look finds), but at least a radius and at most 1.5.
    gap = nearest_neighbour_mm(frame.page_mm)[::step]
    reach = np.clip(gap / 2, frame.r_mm, 1.5 * frame.r_mm)[None, :, None]
    unit = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])[:, None, :]
    allp = (pts[None, :, :] + unit * reach).reshape(-1, 2)
    shifts = unit
    paper = np.tile(fit.background.at(apply_h(fit.H, pts)), len(shifts))
    ev = _ring_evidence(grey, fit.H, allp, paper, frame.r_mm, _DIRS8).reshape(len(shifts), n)
    return float(np.mean(ev[0] > ev[1:].max(0)))


def extra_outlines(grey: np.ndarray, fit: PageFit, frame: BubbleFrame, lay: PageLayout) -> float:
    """Share of rows of options that continue past their last bubble: a printed
    outline one pitch further along the row, better centred there than half a
    pitch off. A sheet with more options per question than the template (a
    5-option sheet read as 4-option) fits the template's bubbles perfectly;
    only this shows it. ~0 on the right template."""
    ends, steps = [], []
    i = 0
    for g in lay.groups:
        n = len(g.bubbles)
        if g.kind in ("question", "choice") and n >= 2:
            a = frame.page_mm[i + n - 2]
            b = frame.page_mm[i + n - 1]
            ends.append(b + (b - a))
            steps.append(b - a)
        i += n
    if len(ends) < 4:
        return 0.0
    pts = np.array(ends)
    if frame.field is not None:
        pts = pts + frame.field(pts)
    step = np.array(steps)
    half = step / 2
    perp = np.stack([-half[:, 1], half[:, 0]], 1)
    shifts = [np.zeros_like(pts), half, -half, perp, -perp]
    allp = np.concatenate([pts + d for d in shifts])
    paper = np.tile(fit.background.at(apply_h(fit.H, pts)), len(shifts))
    ev = _ring_evidence(grey, fit.H, allp, paper, frame.r_mm, _DIRS8).reshape(len(shifts), len(pts))
    # Evidence must also be clearly positive: blank paper beats noise half the time.
    return float(np.mean((ev[0] > ev[1:].max(0)) & (ev[0] > 0.05)))


def _search_lift(grey: np.ndarray, fit: PageFit, u_all: np.ndarray, r: float):
    """Fit the curl model to the outlines: a coarse search over the curl
    amount for each bending axis, then a finer one with its tilt. Returns the
    displacement function ``u -> (N, 2)`` when it explains the outlines
    clearly better than a flat page, else None."""
    # Every third bubble of the sample is plenty to fit three numbers.
    u = u_all[::3]
    paper = fit.background.at(apply_h(fit.H, u))
    flat = float(np.mean(_ring_evidence(grey, fit.H, u, paper, r)))
    # The focal length the homography implies is unreliable when the camera
    # looks nearly straight down; a phone's usual one is tried as well.
    typical = 0.74 * max(grey.shape)
    focals = [typical]
    cam = _camera_from_h(fit.H, grey.shape)
    if cam is not None and abs(math.log(cam[0] / typical)) > 0.2:
        focals.append(cam[0])
    best = (flat, None, 0, 0.0, 0.0)
    for f in focals:
        model = _lift_model(fit, grey.shape, f)
        if model is None:
            continue

        def score(axis: int, a: float, b: float, model=model) -> float:
            d = model(u, axis, a, b)
            return float(np.mean(_ring_evidence(grey, fit.H, u + d, paper, r)))

        for axis in (0, 1):
            for a in np.arange(-16.0, 16.01, 1.5):
                if a == 0:
                    continue
                sc = score(axis, a, 0.0)
                if sc > best[0]:
                    best = (sc, (model, score), axis, a, 0.0)
    if best[1] is None:
        return None
    _, (model, score), axis, a, b = best
    for step_a, step_b in ((0.75, 0.2), (0.35, 0.1), (0.15, 0.05)):
        improved = True
        while improved:
            improved = False
            for da, db in ((step_a, 0), (-step_a, 0), (0, step_b), (0, -step_b)):
                nb = max(-0.6, min(0.6, b + db))
                sc = score(axis, a + da, nb)
                if sc > best[0] + 1e-5:
                    best = (sc, (model, score), axis, a + da, nb)
                    a, b = a + da, nb
                    improved = True
    if best[0] < flat + 0.01:
        return None
    return lambda q: model(q, axis, a, b)


def refine_on_bubbles(grey: np.ndarray, fit: PageFit, lay: PageLayout, *, max_rounds: int = 30) -> BubbleFrame:
    """Correct the marks-only homography on the printed bubble outlines.

    ``lay``: the page layout in mm (``layout_mm``). Returns a ``BubbleFrame``
    with every bubble's image centre.

    Curled paper and lens distortion move the middle of the page by up to a
    few mm, more than a bubble's radius, so outlines cannot all be searched for
    where the flat homography puts them without catching a neighbour's. The
    search grows instead: outlines are first looked for everywhere at the flat
    position and kept where they agree with their neighbours; then, round by
    round, the next bubbles out are looked for where the outlines already found
    around them (and the marks, fixed) predict them, a few mm at a time. The
    displacement of every bubble is finally a smooth local fit to all outlines
    found.
    """
    page = bubble_centres_mm(lay)
    r = float(lay.groups[0].bubbles[0].r) if len(page) else 2.2
    bubbles = page
    H = fit.H
    frame = BubbleFrame(apply_h(H, page), jacobians(H, page), r, H, page)
    if len(bubbles) < 6:
        return frame
    marks = fit.geometry.centres
    quick = _quick_fit(grey, fit, lay, page, r)
    if quick is not None:
        field_fn, share, used = quick
        total = field_fn(page)
        frame.field = field_fn
        pts = page + total
        frame.centres = apply_h(H, pts)
        frame.J = jacobians(H, pts)
        frame.shift_mm = float(np.max(np.linalg.norm(total, axis=1)))
        frame.found_share, frame.used = share, used
        return frame
    sub = _sampled_subset(lay)
    u = page[sub]
    n = len(sub)
    radii = np.linspace(0.15 * r, 1.75 * r, 22)
    known = np.zeros(n, bool)  # outline found and consistent
    dead = np.zeros(n, dtype=np.int8)  # failed looks (filled, smudged, off)
    disp = np.zeros((n, 2))
    sigma = 12.0

    def look(idx: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = u[idx] + pred
        c = apply_h(H, pts)
        prof = ray_profiles(grey, c, jacobians(H, pts), radii)
        paper = fit.background.at(c)
        inner = prof[..., :5].mean((1, 2))  # within ~0.5 r of the centre
        filled = (paper - inner) / np.maximum(paper, 1) > 0.18
        off, resid = _ring_offsets(prof, radii, paper, r, _DIRS)
        ok = ~np.isnan(off[:, 0]) & ~filled & (resid < 0.12 * r + 0.1)
        return ok, pred + np.nan_to_num(off), filled

    # A curled page moves its middle by up to several mm: a physical model of
    # the curl, fitted to the outlines, gives the first guess; what it leaves
    # is found by the search below.
    lift = None
    prior = np.zeros((n, 2))
    ok0, d0, filled0 = look(np.arange(n), prior.copy())
    near0 = ok0 & (np.linalg.norm(d0, axis=1) < 0.9)
    if near0.sum() < 0.75 * max(1, int((~filled0).sum())):
        lift = _search_lift(grey, fit, u, r)
        if lift is not None:
            prior = lift(u)
    marks_prior = np.zeros_like(marks)

    def predict(q: np.ndarray) -> np.ndarray:
        base = lift(q) if lift is not None else np.zeros((len(q), 2))
        ku = np.vstack([u[known], marks])
        kd = np.vstack([disp[known] - prior[known], marks_prior])
        kw = np.concatenate([np.ones(int(known.sum())), np.full(len(marks), 4.0)])
        return base + _local_fit(q, ku, kd, kw, sigma)

    # Round 0: everywhere at the first guess.
    ok, d, filled = look(np.arange(n), prior.copy()) if lift is not None else (ok0, d0, filled0)
    # Where the page moved by more than about a bubble radius, the outline found
    # may be a neighbour's, seen from inside it: such regions are left to the
    # growth rounds, which come at them from where the page moved less.
    ok &= np.linalg.norm(d - prior, axis=1) < 0.9
    disp[ok] = d[ok]
    known[ok] = True
    dead[~ok] = 1
    dead[filled] = 99  # a filled bubble's outline is hidden: never looked at again
    if ok.sum() >= 6:
        # Keep what agrees with its neighbourhood (catches a neighbour's outline
        # taken for this one where the page moved a lot).
        for _ in range(2):
            ki = np.flatnonzero(known)
            if len(ki) < 6:
                break
            ku, kd = u[ki], disp[ki]
            d2 = ((ku[:, None, :] - ku[None, :, :]) ** 2).sum(-1)
            w = np.exp(-d2 / (2 * 10.0 ** 2))
            np.fill_diagonal(w, 0)
            wsum = w.sum(1)
            mean = (w @ kd) / np.maximum(wsum, 1e-9)[:, None]
            bad = (wsum > 0.5) & (np.linalg.norm(kd - mean, axis=1) > 0.45)
            if not bad.any():
                break
            known[ki[bad]] = False
            dead[ki[bad]] = 1
    # Growth rounds, one ring of neighbours at a time, while outlines are
    # missing that a better prediction may find. Gaps between blocks are
    # crossed by reaching further when nothing is within reach.
    rounds = 0
    reach = 10.0
    while rounds < max_rounds and known.any():
        cand = np.flatnonzero(~known & (dead < 3))
        if len(cand) == 0:
            break
        ku = u[known]
        dist = np.sqrt(((u[cand][:, None, :] - ku[None, :, :]) ** 2).sum(-1).min(1))
        sel = dist < reach
        if not sel.any():
            reach = max(reach + 8.0, float(dist.min()) + 1.0)
            if reach > 80:
                break
            continue
        rounds += 1
        near, dist = cand[sel], dist[sel]
        pred = predict(u[near])
        ok, d, filled = look(near, pred)
        # A new outline must sit about where its neighbours said: the
        # prediction is good to a few tenths of a mm a bubble away.
        close = np.linalg.norm(d - pred, axis=1) < 0.5 + 0.06 * dist
        acc = near[ok & close]
        disp[acc] = d[ok & close]
        known[acc] = True
        dead[near[~(ok & close)]] += 1
        dead[near[filled]] = 99
        reach = 10.0 if len(acc) else reach + 6.0
    total = predict(page) if known.any() else np.zeros_like(page)
    if known.any():
        frame.field = predict
    fitted = total[sub][known]
    rms = float(np.sqrt(np.mean(np.sum((disp[known] - fitted) ** 2, 1)))) if known.any() else 0.0
    pts = page + total
    frame.centres = apply_h(H, pts)
    frame.J = jacobians(H, pts)
    frame.fit_rms_mm = rms
    frame.shift_mm = float(np.max(np.linalg.norm(total, axis=1))) if len(total) else 0.0
    frame.used = int(known.sum())
    frame.found_share = float(known.sum()) / max(1, int((dead < 99).sum()))
    return frame
